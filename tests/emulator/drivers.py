"""Minimal protocol drivers for the emulator tests (not a client library: see relay/ for that).

Just enough of a listener and a sender on top of ``websockets`` to exercise the
emulator's side of the wire protocol, using the shared sans-I/O core in
:mod:`relay.protocol` and :mod:`relay.sas`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any, Awaitable, Callable

import websockets
from websockets.asyncio.client import ClientConnection, connect

from relay import protocol as p
from relay import sas

ROOT = "RootManageSharedAccessKey"


def sas_token(emu, entity: str = "", rule: str = ROOT, *, ttl: float = 3600, key: str | None = None, now: float | None = None) -> str:
    """A .NET-form SAS token (``http://127.0.0.1:PORT/entity/``) signed with the rule's key."""
    resource = sas.sas_resource_uri(emu.address(entity) if entity else f"sb://{emu.host}/")
    return sas.generate_sas_token(resource, rule, key if key is not None else emu.sas_key(rule), ttl=ttl, now=now)


def hc(emu, entity: str, action: str, *, id: str | None = None, token: str | None = None, suffix: str = "", app_query: str = "") -> str:
    return p.hc_url(emu.relay, entity, action, id=id, token=token, suffix=suffix, app_query=app_query)


def ws_connect(emu, url: str, token: str | None = None, *, headers: dict[str, str] | None = None, **kw: Any):
    """``websockets`` client for the emulator: CA trusted, no compression, no size limit."""
    extra = dict(headers or {})
    if token is not None:
        extra[p.HEADER_TOKEN] = token
    ssl_ctx = emu.ssl_context() if url.startswith("wss:") else None
    return connect(url, ssl=ssl_ctx, additional_headers=extra, compression=None, max_size=None,
                   proxy=None, open_timeout=10, ping_interval=None, **kw)


async def handshake_status(emu, url: str, token: str | None = None, **kw: Any) -> tuple[int, str]:
    """Expect the WebSocket handshake to fail; return ``(status, reason phrase)``."""
    try:
        async with ws_connect(emu, url, token, **kw):
            pass
    except websockets.InvalidStatus as exc:
        return exc.response.status_code, exc.response.reason_phrase
    raise AssertionError("the handshake unexpectedly succeeded")


AcceptHandler = Callable[[p.AcceptCommand, "TestListener"], Awaitable[None]]
RequestHandler = Callable[[p.RequestCommand, bytes | None], Awaitable[tuple[int, dict[str, str], bytes]]]


class TestListener:
    """A control channel that echoes WebSocket senders and answers HTTP requests.

    ``on_accept`` and ``on_request`` replace the default behaviour. HTTP responses
    go back on the control channel when the body is at most 64 KiB and over the
    request's rendezvous otherwise (the rule every real listener follows).
    """

    __test__ = False  # not a pytest class

    def __init__(self, emu, entity: str, token: str | None, *, id: str | None = None,
                 on_accept: AcceptHandler | None = None, on_request: RequestHandler | None = None) -> None:
        self.emu = emu
        self.entity = entity
        self.token = token
        self.id = id or p.new_tracking_id()
        self.on_accept = on_accept or self.echo_accept
        self.on_request = on_request or self.echo_request
        self.accepts = 0
        self.rendezvous_requests = 0  # requests that arrived address-only and were fetched over a rendezvous
        self.requests: list[tuple[p.RequestCommand, bytes | None]] = []
        self.cut_off: list[int | None] = []  # close codes of rendezvous requests whose body was cut off
        self.ws: ClientConnection | None = None
        self.closed: asyncio.Future | None = None
        self._task: asyncio.Task | None = None
        self._tasks: set[asyncio.Task] = set()
        self._send_lock = asyncio.Lock()

    async def __aenter__(self) -> "TestListener":
        self.ws = await ws_connect(self.emu, hc(self.emu, self.entity, "listen", id=self.id), self.token)
        self.closed = asyncio.get_running_loop().create_future()
        self._task = asyncio.create_task(self._pump())
        return self

    async def __aexit__(self, *exc) -> None:
        if self._task:
            self._task.cancel()
        for t in list(self._tasks):
            t.cancel()
        if self.ws:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.ws.close(), 2)

    async def send(self, text: str, body: bytes | None = None) -> None:
        assert self.ws is not None
        async with self._send_lock:
            await self.ws.send(text)
            if body is not None:
                await self.ws.send(body)

    async def renew(self, token: str) -> None:
        await self.send(json.dumps({"renewToken": {"token": token}}))

    def _spawn(self, coro) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _pump(self) -> None:
        assert self.ws is not None and self.closed is not None
        reader = p.CommandReader()
        try:
            async for message in self.ws:
                item = reader.feed(message)
                if item is None:
                    continue
                command, body = item
                if isinstance(command, p.AcceptCommand):
                    self.accepts += 1
                    self._spawn(self.on_accept(command, self))
                elif isinstance(command, p.RequestCommand):
                    self._spawn(self._serve(command, body))
        except websockets.ConnectionClosed:
            pass
        finally:
            rcvd = self.ws.protocol.close_rcvd
            if not self.closed.done():
                self.closed.set_result((rcvd.code, rcvd.reason) if rcvd else (None, None))

    async def _serve(self, command: p.RequestCommand, body: bytes | None) -> None:
        if command.is_address_only:
            async with ws_connect(self.emu, command.address) as rdv:
                reader = p.CommandReader()
                item = None
                try:
                    while item is None:
                        item = reader.feed(await rdv.recv())
                except websockets.ConnectionClosed:
                    rcvd = rdv.protocol.close_rcvd
                    self.cut_off.append(rcvd.code if rcvd else None)
                    return
                full, full_body = item
                assert isinstance(full, p.RequestCommand)
                self.rendezvous_requests += 1
                self.requests.append((full, full_body))
                status, headers, out = await self.on_request(full, full_body)
                await rdv.send(p.encode_command(p.ResponseCommand(full.id, status, "Custom Reason", headers, True)))
                await rdv.send(out)
                with contextlib.suppress(websockets.ConnectionClosed):
                    await rdv.wait_closed()
            return
        self.requests.append((command, body))
        status, headers, out = await self.on_request(command, body)
        response = p.encode_command(p.ResponseCommand(command.id, status, "Custom Reason", headers, True))
        if len(out) <= p.INLINE_LIMIT:
            await self.send(response, out)
        else:
            async with ws_connect(self.emu, command.address) as rdv:
                await rdv.send(response)
                await rdv.send(out)
                with contextlib.suppress(websockets.ConnectionClosed):
                    await asyncio.wait_for(rdv.wait_closed(), 5)

    @staticmethod
    async def echo_request(command: p.RequestCommand, body: bytes | None) -> tuple[int, dict[str, str], bytes]:
        meta = {
            "method": command.method,
            "target": command.request_target,
            "headers": command.request_headers,
            "length": len(body or b""),
        }
        return 200, {"X-Meta": json.dumps(meta), "Content-Type": "application/octet-stream"}, body or b""

    @staticmethod
    async def echo_accept(command: p.AcceptCommand, listener: "TestListener") -> None:
        offered = command.connect_headers.get("Sec-WebSocket-Protocol")
        protocols = [offered.split(",")[0].strip()] if offered else None
        async with ws_connect(listener.emu, command.address, subprotocols=protocols) as rdv:
            with contextlib.suppress(websockets.ConnectionClosed):
                async for message in rdv:
                    await rdv.send(message)


class LogWatch:
    """The emulator log lines written since this object was created (the log is shared by a session)."""

    def __init__(self, emu) -> None:
        self.path = emu.log_path
        self.offset = self.path.stat().st_size if self.path.exists() else 0

    def text(self) -> str:
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            return f.read().decode("utf-8", "replace")

    async def wait_for(self, *needles: str, timeout: float = 3.0) -> str:
        """Wait until every needle appears in the new log text; return that text."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            text = self.text()
            if all(n in text for n in needles):
                return text
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"log lines {needles!r} not found in:\n{text[-3000:]}")
            await asyncio.sleep(0.05)


async def round_trip(emu, entity: str = "inbound") -> None:
    """A normal WebSocket echo and HTTP request through a fresh listener: the emulator is still healthy."""
    import aiohttp

    token = sas_token(emu, entity)
    async with TestListener(emu, entity, token):
        async with ws_connect(emu, hc(emu, entity, "connect"), token) as ws:
            await ws.send("still fine")
            assert await ws.recv() == "still fine"
        async with aiohttp.ClientSession() as session:
            async with session.post(p.entity_url(emu.http, entity), data=b"ok?", headers={p.HEADER_TOKEN: token},
                                    ssl=emu.ssl_context() if emu.ca_cert else None) as r:
                assert r.status == 200 and await r.read() == b"ok?"
