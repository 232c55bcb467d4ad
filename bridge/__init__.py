"""The Relay bridge Functions app: blueprints (http_send, queue_send, listener_orchestration,
admin) and the plain modules they delegate to. See docs/app.md."""


async def reset_caches() -> None:
    """Close and forget every per-process cache: settings, Relay clients, storage clients, credentials.

    The app keeps these for the life of a worker process; tests call this between cases that
    change the environment (identity endpoint, storage, namespace).
    """
    from . import credentials, sender, settings, storage

    settings._cached = None
    await sender.close_clients()
    await storage.close_clients()
    await credentials.close_credentials()
