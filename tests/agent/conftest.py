"""Helpers for the forwarder and agent tests: real local services, raw senders, CLI subprocesses.

Everything runs against the real emulator subprocess (``tests.fixtures.emulator``) and real
aiohttp servers on 127.0.0.1 (port 0). The "attacker" senders build their URLs by hand with
``encoded=True`` so that nothing on the sending side normalises the hostile path first.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import AsyncIterator

import aiohttp
from aiohttp import web
from yarl import URL

from relay.protocol import HEADER_TOKEN, hc_url
from relay.sas import generate_sas_token, sas_resource_uri

REPO_ROOT = Path(__file__).resolve().parents[2]
ROOT_RULE = "RootManageSharedAccessKey"


@dataclass
class LocalService:
    """A real HTTP + WebSocket server on 127.0.0.1 that records every request it gets."""

    name: str
    port: int = 0
    seen: list[str] = field(default_factory=list)
    hold: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@contextlib.asynccontextmanager
async def local_service(name: str = "local") -> AsyncIterator[LocalService]:
    """Serve ``/admin/secret`` ("SECRET"), ``/slow`` (waits for ``svc.hold``), a WebSocket echo, and echo everything else."""
    svc = LocalService(name)

    async def handle(request: web.Request) -> web.StreamResponse:
        svc.seen.append(request.raw_path)
        if request.headers.get("Upgrade", "").lower() == "websocket":
            ws = web.WebSocketResponse(protocols=("v1", "v2"))
            await ws.prepare(request)
            async for msg in ws:
                if msg.type == aiohttp.WSMsgType.TEXT:
                    await ws.send_str(f"{svc.name}:{request.raw_path}:{msg.data}")
                elif msg.type == aiohttp.WSMsgType.BINARY:
                    await ws.send_bytes(msg.data)
            return ws
        if request.path.startswith("/big/"):
            size = int(request.path.rsplit("/", 1)[1])
            data = bytes(i % 251 for i in range(size))
            if "chunked" not in request.query:
                return web.Response(body=data)
            resp = web.StreamResponse()
            resp.enable_chunked_encoding()
            await resp.prepare(request)
            for i in range(0, size, 10000):
                await resp.write(data[i:i + 10000])
            await resp.write_eof()
            return resp
        if request.path.startswith("/admin"):
            return web.Response(text="SECRET")
        if request.path.endswith("/slow"):
            await svc.hold.wait()
            return web.Response(text="finally")
        body = await request.read()
        headers = {"X-Local": svc.name, "X-Seen-Authorization": request.headers.get(HEADER_TOKEN, "")}
        return web.Response(status=200, text=f"{svc.name} {request.method} {request.raw_path} {body.decode()}",
                            headers=headers)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    svc.port = site._server.sockets[0].getsockname()[1]
    try:
        yield svc
    finally:
        svc.hold.set()
        await runner.cleanup()


def sas_token(emu, entity: str, rule: str = ROOT_RULE) -> str:
    return generate_sas_token(sas_resource_uri(emu.address(entity)), rule, emu.sas_key(rule))


def dev_connection_string(emu, entity: str, rule: str = ROOT_RULE) -> str:
    return emu.connection_string(rule, entity) + f";UseDevelopmentEmulator=true;TrustedCaFile={emu.ca_cert}"


async def raw_http(emu, entity: str, raw: str, *, method: str = "GET", rule: str = ROOT_RULE,
                   body: bytes | None = None) -> tuple[int, str]:
    """Send ``raw`` (path below the entity, exactly as written) through the emulator's HTTP endpoint."""
    url = URL(f"{emu.http}/{entity}{raw}", encoded=True)
    async with aiohttp.ClientSession() as session:
        async with session.request(method, url, headers={HEADER_TOKEN: sas_token(emu, entity, rule)}, data=body,
                                   ssl=emu.ssl_context()) as resp:
            return resp.status, await resp.text()


async def raw_ws(emu, entity: str, suffix: str, *, rule: str = ROOT_RULE, message: str = "hi",
                 protocols: tuple[str, ...] = ()) -> tuple[int, str | None]:
    """Open a relayed WebSocket with ``suffix`` after the entity exactly as written; ``(status, reply)``."""
    suffix, _, query = suffix.partition("?")
    url = URL(hc_url(emu.relay, entity, "connect", token=sas_token(emu, entity, rule), suffix=suffix, app_query=query),
              encoded=True)
    async with aiohttp.ClientSession() as session:
        try:
            async with session.ws_connect(url, ssl=emu.ssl_context(), protocols=protocols) as ws:
                await ws.send_str(message)
                msg = await asyncio.wait_for(ws.receive(), 15)
                reply = msg.data if msg.type == aiohttp.WSMsgType.TEXT else None
                return 101, reply
        except aiohttp.WSServerHandshakeError as exc:
            return exc.status, None


@contextlib.asynccontextmanager
async def relay_cli(*args: str, env: dict | None = None, ready: bytes = b"online") -> AsyncIterator[asyncio.subprocess.Process]:
    """Run ``python -m relay ARGS`` until its stderr shows ``ready``; SIGTERM it on exit."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "relay", *args, stderr=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL,
        env={**os.environ, **(env or {})}, cwd=str(REPO_ROOT),
    )
    seen = b""
    drainer = None
    try:
        while ready not in seen:
            line = await asyncio.wait_for(proc.stderr.readline(), 20)
            if not line:
                raise AssertionError(f"relay {' '.join(args)} exited early: {seen.decode()[-1500:]}")
            seen += line
        log = bytearray(seen)
        proc.log = log  # type: ignore[attr-defined]  # everything the process wrote to stderr so far

        async def drain() -> None:
            while line := await proc.stderr.readline():
                log.extend(line)

        drainer = asyncio.ensure_future(drain())
        yield proc
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 15)
            except asyncio.TimeoutError:
                proc.kill()
                await proc.wait()
        if drainer is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(drainer, 5)


def parse_json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]
