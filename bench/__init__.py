"""Benchmarks: this library vs Microsoft's Node clients on one emulator, and the bridge end to end. Run `make bench`."""
