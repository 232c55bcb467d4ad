"""Assemble the local host: settings, function index, HTTP/queue/timer triggers, Durable."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from . import settings as settings_mod
from .durable.api import PREFIX as DURABLE_PREFIX
from .durable.api import client_binding
from .durable.api import routes as durable_routes
from .durable.realism import load_realism
from .durable.service import DurableService
from .hostconfig import HostConfig, load_host_config
from .http_host import HttpHost
from .invoker import Invoker
from .keys import Keys, load_keys
from .loader import FunctionIndex, load
from .ports import PortBusyError, ensure_free
from .queues import QueueListener, QueueStore, decode_message
from .timers import TimerRunner

log = logging.getLogger("devhost")

SUPPORTED_TRIGGERS = {"httpTrigger", "queueTrigger", "timerTrigger", "orchestrationTrigger", "activityTrigger"}


def _json(body, status: int = 200) -> web.Response:
    """JSON with a trailing newline, so curl output ends cleanly in a terminal."""
    return web.Response(text=json.dumps(body) + "\n", status=status, content_type="application/json")


@dataclass
class Host:
    """A configured local host; ``start()`` binds and starts the triggers, ``stop()`` undoes it."""

    app_dir: Path
    state_dir: Path
    port: int = 7071
    bind: str = "127.0.0.1"
    config: HostConfig = field(init=False)
    index: FunctionIndex = field(init=False)
    keys: Keys = field(init=False)

    def __post_init__(self) -> None:
        self.app_dir = self.app_dir.resolve()
        local = settings_mod.load_local_settings(self.app_dir)
        settings_mod.apply_values(local.get("Values") or {})
        self.config = load_host_config(self.app_dir)
        for path in self.config.overrides:
            log.info("host.json %s overridden by the app setting AzureFunctionsJobHost__%s", path, path.replace(".", "__"))
        self.index = load(self.app_dir)
        http_names = [f.name for f in self.index.by_trigger("httpTrigger")]
        self.keys = load_keys(self.state_dir, http_names)
        self.invoker = Invoker(str(self.app_dir))
        self.queue_store = QueueStore(self.config.queues)
        self.invoker.output_handlers["queue"] = self.queue_store.output_handler
        self.invoker.input_providers["durableClient"] = self._durable_client
        self.realism = load_realism(self.config.max_queue_polling_interval)
        if self.realism.enabled:
            log.info("durable: realistic timing: %s", self.realism.describe())
        self.durable = DurableService(self.index, self.invoker, self.state_dir / "durable.sqlite",
                                      self.config.hub_name, self.config.overridable_states,
                                      self.config.max_activities, realism=self.realism)
        self.http = HttpHost(self.index.by_trigger("httpTrigger"), self.invoker, self.keys, self.config.route_prefix)
        self._tasks: list[asyncio.Task] = []
        self._listeners: list[QueueListener] = []
        self._runner: web.AppRunner | None = None
        for info in self.index.functions.values():
            if info.trigger_type not in SUPPORTED_TRIGGERS:
                log.warning("function %s: trigger %s is not supported by devhost; it will not run",
                            info.name, info.trigger_type)

    @property
    def origin(self) -> str:
        return f"http://{self.bind}:{self.port}"

    def _durable_client(self, binding: dict, origin: str | None) -> str:
        hub = binding.get("taskHub") or self.config.hub_name
        return client_binding(origin or self.origin, self.origin, hub)

    # ---- HTTP app ------------------------------------------------------------------------
    def _web_app(self) -> web.Application:
        app = web.Application(client_max_size=100 * 1024 * 1024)
        app.add_routes(durable_routes(self.durable))
        app.add_routes([
            web.get("/admin/host/status", self._host_status),
            web.get("/admin/functions", self._functions),
            web.post("/admin/devhost/enqueue/{queue}", self._enqueue),
            web.get("/admin/devhost/peek/{queue}", self._peek),
        ])
        if self.config.route_prefix:
            app.add_routes([web.route("*", f"/{self.config.route_prefix}/{{tail:.*}}", self.http.handle),
                             web.get("/", self._host_status)])
        else:  # routePrefix "": functions own every other path
            app.add_routes([web.route("*", "/{tail:.*}", self.http.handle)])
        return app

    async def _host_status(self, request: web.Request) -> web.Response:
        return web.json_response({"state": "Running", "version": "devhost"})

    def _admin(self, request: web.Request) -> bool:
        presented = request.query.get("code") or request.headers.get("x-functions-key")
        return self.keys.authorize("admin", "", presented)

    async def _functions(self, request: web.Request) -> web.Response:
        if not self._admin(request):
            return web.Response(status=401)
        return web.json_response([{"name": f.name, "bindings": f.bindings} for f in self.index.functions.values()])

    async def _enqueue(self, request: web.Request) -> web.Response:
        """devhost-only helper: enqueue the request body (base64-encoded like the host's output binding)."""
        if not self._admin(request):
            return web.Response(status=401)
        body = await request.read()
        connection = request.query.get("connection") or None
        try:
            await self.queue_store.send(connection, request.match_info["queue"], body)
        except Exception as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return _json({"queue": request.match_info["queue"], "bytes": len(body)}, status=201)

    async def _peek(self, request: web.Request) -> web.Response:
        """devhost-only helper: peek (not dequeue) up to 32 messages, decoded per messageEncoding."""
        if not self._admin(request):
            return web.Response(status=401)
        connection = request.query.get("connection") or None
        try:
            client = self.queue_store.client(connection, request.match_info["queue"])
            peeked = await client.peek_messages(max_messages=32)
        except Exception as exc:
            return web.json_response({"error": str(exc)}, status=400)
        messages = []
        for message in peeked:
            try:
                text = decode_message(message.content or "", self.config.queues.message_encoding).decode("utf-8")
            except (ValueError, UnicodeDecodeError):
                text = message.content
            messages.append({"id": message.id, "dequeueCount": message.dequeue_count,
                             "insertionTime": message.inserted_on.isoformat() if message.inserted_on else None,
                             "body": text})
        return _json({"queue": request.match_info["queue"], "messages": messages})

    # ---- lifecycle -----------------------------------------------------------------------
    async def start(self) -> None:
        ensure_free(self.port, self.bind, "the Functions host (devhost)")
        self._runner = web.AppRunner(self._web_app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.bind, self.port)
        try:
            await site.start()
        except OSError as exc:
            raise PortBusyError(f"port {self.port} for devhost: {exc}") from None
        self.port = site._server.sockets[0].getsockname()[1]
        await self.durable.start()
        loop = asyncio.get_running_loop()
        for info in self.index.by_trigger("queueTrigger"):
            listener = QueueListener(info, self.queue_store, self.invoker)
            self.queue_store.register(listener)
            self._listeners.append(listener)
            self._tasks.append(loop.create_task(self._guard(f"queue listener {info.name}", listener.run())))
        for info in self.index.by_trigger("timerTrigger"):
            runner = TimerRunner(info, self.invoker)
            self._tasks.append(loop.create_task(self._guard(f"timer {info.name}", runner.run())))

    async def _guard(self, what: str, coro) -> None:
        try:
            await coro
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s stopped; it will not run again until devhost restarts", what)

    async def stop(self, grace: float = 5.0) -> None:
        """Stop polling, give running queue invocations ``grace`` seconds, release the rest."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.gather(*(listener.stop(grace) for listener in self._listeners))
        await self.durable.close()
        if self._runner is not None:
            await self._runner.cleanup()
        await self.queue_store.close()

    def describe(self) -> dict:
        """The first stdout line: where the host listens and what it serves (no key values)."""
        functions = {}
        for info in self.index.functions.values():
            entry = {"trigger": info.trigger_type}
            if info.trigger_type == "httpTrigger":
                prefix = f"/{self.config.route_prefix}" if self.config.route_prefix else ""
                entry.update(route=f"{prefix}/{info.trigger.get('route') or info.name}",
                             methods=info.trigger.get("methods"), authLevel=info.trigger.get("authLevel"))
            elif info.trigger_type == "queueTrigger":
                entry.update(queue=info.trigger["queueName"], connection=info.trigger.get("connection"))
            elif info.trigger_type == "timerTrigger":
                entry.update(schedule=info.trigger["schedule"])
            functions[info.name] = entry
        return {"url": self.origin, "port": self.port, "api": f"{self.origin}/{self.config.route_prefix}".rstrip("/"),
                "durable": f"{self.origin}{DURABLE_PREFIX}", "state_dir": str(self.state_dir),
                "keys_file": str(self.keys.path), "hub": self.config.hub_name, "functions": functions}


async def serve(app_dir: Path, state_dir: Path, port: int, bind: str = "127.0.0.1") -> int:
    host = Host(app_dir, state_dir, port, bind)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await host.start()
    except PortBusyError as exc:
        log.error("%s", exc)
        await host.stop()
        return 2
    print(json.dumps(host.describe()), flush=True)
    log.info("devhost serving %s from %s on %s", ", ".join(host.index.functions), app_dir, host.origin)
    for name, entry in host.describe()["functions"].items():  # like `func start`, without key values
        if entry["trigger"] == "httpTrigger":
            log.info("  %s: [%s] %s%s (%s)", name, ",".join(entry.get("methods") or ["*"]), host.origin,
                     entry["route"], str(entry.get("authLevel")).lower())
        else:
            log.info("  %s: %s", name, entry["trigger"])
    log.info("function keys: %s (?code= or x-functions-key)", host.keys.path)
    await stop.wait()
    log.info("devhost stopping")
    await host.stop()
    return 0
