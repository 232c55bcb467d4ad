"""Shared fixtures: real local services (Azurite, the Relay emulator), started once per session."""

pytest_plugins = ["tests.fixtures.azurite", "tests.fixtures.emulator"]
