"""A local Azure Functions host for function_app.py, with Azurite and the Relay emulator."""
