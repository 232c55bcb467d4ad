"""Azure Relay Hybrid Connections for Python: listener and sender, WebSocket and HTTP, Entra ID and SAS."""
