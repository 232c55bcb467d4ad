"""Benchmarks: this library vs Microsoft's Node clients, side by side on one emulator. Run `make bench`."""
