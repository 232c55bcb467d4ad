"""The strict profile (issue 9): one test per point where the emulator is as strict as Azure.

Each behaviour is on by default (the session ``emulator``/``fast_emulator``) and has a config key;
``lenient_emulator`` runs with every key at its lenient value. See emulator/README.md "Strict profile".
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time

import aiohttp
import pytest
import websockets
from yarl import URL

from relay import protocol as p
from relay import sas
from tests.emulator.drivers import ROOT, LogWatch, TestListener, handshake_status, hc, sas_token, ws_connect


def _rendezvous_parts(address: str) -> tuple[str, str]:
    before, _, query = address.partition("?")
    return before, query


# -- 1. rendezvous on a gateway host, used byte for byte ---------------------------------------------


async def test_accept_address_names_the_gateway_host_and_must_be_used_as_given(emulator):
    seen: list[p.AcceptCommand] = []
    statuses: list[tuple[int, str]] = []

    async def accept(cmd, listener):
        seen.append(cmd)
        base, query = _rendezvous_parts(cmd.address)
        # Re-quoted (upper-case hex, as yarl does) or dialed on the namespace host: refused.
        statuses.append(await handshake_status(listener.emu, f"{base}?{query.replace('%2f', '%2F')}"))
        statuses.append(await handshake_status(listener.emu, cmd.address.replace("127.0.0.2", "127.0.0.1", 1)))
        await TestListener.echo_accept(cmd, listener)

    token = sas_token(emulator, "echo")
    async with TestListener(emulator, "echo", token, on_accept=accept):
        async with ws_connect(emulator, hc(emulator, "echo", "connect"), token) as ws:
            await ws.send("through the gateway")
            assert await ws.recv() == "through the gateway"
    address = seen[0].address
    assert address.startswith("wss://127.0.0.2:") and "%2f" in address and "%2F" in address
    assert [s for s, _ in statuses] == [403, 403]
    assert "exactly as given" in statuses[0][1] and "host it names" in statuses[1][1]


async def test_request_address_names_the_gateway_host(emulator):
    token = sas_token(emulator, "orders")
    async with TestListener(emulator, "orders", token) as listener:
        async with aiohttp.ClientSession() as session:
            async with session.post(f"{emulator.http}/orders", data=b"x" * 70000, headers={p.HEADER_TOKEN: token},
                                    ssl=emulator.ssl_context()) as r:
                assert r.status == 200
    assert listener.rendezvous_requests == 1


async def test_lenient_rendezvous_stays_on_the_namespace_host(lenient_emulator):
    emu = lenient_emulator
    seen: list[str] = []

    async def accept(cmd, listener):
        seen.append(cmd.address)
        await TestListener.echo_accept(cmd, listener)

    token = sas_token(emu, "echo")
    async with TestListener(emu, "echo", token, on_accept=accept):
        async with ws_connect(emu, hc(emu, "echo", "connect"), token) as ws:
            await ws.send("x")
            assert await ws.recv() == "x"
    assert seen[0].startswith(f"ws://127.0.0.1:{emu.port}/") and "%2f" not in seen[0]


# -- 3., 4., 6. rendezvous lifetime, requests without address, responses where Azure allows them ------


class PinningListener:
    """A raw listener that fetches address-only requests over a rendezvous and keeps it open.

    ``on_rendezvous(full, body, rdv)`` answers requests arriving on the rendezvous (return False
    to close the rendezvous without answering). Inline requests are answered on the control channel.
    """

    def __init__(self, emu, on_rendezvous) -> None:
        self.emu = emu
        self.on_rendezvous = on_rendezvous
        self.rendezvous_messages: list[dict] = []
        self.inline: list[p.RequestCommand] = []
        self.tasks: set[asyncio.Task] = set()

    async def __aenter__(self):
        self.ws = await ws_connect(self.emu, hc(self.emu, "orders", "listen"), sas_token(self.emu, "orders"))
        self.pump = asyncio.create_task(self._pump())
        return self

    async def __aexit__(self, *exc):
        self.pump.cancel()
        for task in list(self.tasks):
            task.cancel()
        with contextlib.suppress(Exception):
            await self.ws.close()

    async def _pump(self):
        reader = p.CommandReader()
        async for message in self.ws:
            item = reader.feed(message)
            if item is None:
                continue
            command, body = item
            if isinstance(command, p.RequestCommand):
                if command.is_address_only:
                    task = asyncio.create_task(self._rendezvous(command))
                    self.tasks.add(task)
                else:
                    self.inline.append(command)
                    head = p.encode_command(p.ResponseCommand(command.id, 200, "OK", {}, True))
                    await self.ws.send(head)
                    await self.ws.send(b"control")

    async def _rendezvous(self, command: p.RequestCommand):
        async with ws_connect(self.emu, command.address) as rdv:
            reader = p.CommandReader()
            with contextlib.suppress(websockets.ConnectionClosed):
                async for message in rdv:
                    if isinstance(message, str):
                        self.rendezvous_messages.append(json.loads(message))
                    item = reader.feed(message)
                    if item is None:
                        continue
                    full, body = item
                    if await self.on_rendezvous(full, body, rdv) is False:
                        return


async def _answer(full, body, rdv):
    await rdv.send(p.encode_command(p.ResponseCommand(full.id, 200, "OK", {}, True)))
    await rdv.send(b"rendezvous:" + (full.request_target or "").encode())


async def test_later_requests_of_a_sender_connection_use_its_rendezvous_without_address(emulator):
    token = sas_token(emulator, "orders")
    async with PinningListener(emulator, _answer) as listener:
        connector = aiohttp.TCPConnector(limit=1, ssl=emulator.ssl_context())
        async with aiohttp.ClientSession(connector=connector, headers={p.HEADER_TOKEN: token}) as session:
            bodies = []
            for path, data in (("/orders/big", b"x" * 70000), ("/orders/second", b"small"), ("/orders/third", None)):
                async with session.post(f"{emulator.http}{path}", data=data) as r:
                    assert r.status == 200
                    bodies.append(await r.read())
    # The first request opened the rendezvous; the later ones came over it, not the control channel.
    assert bodies == [b"rendezvous:/orders/big", b"rendezvous:/orders/second", b"rendezvous:/orders/third"]
    assert listener.inline == []
    requests = [m["request"] for m in listener.rendezvous_messages if "request" in m]
    assert len(requests) == 3
    assert all("address" not in r and r["method"] == "POST" for r in requests)  # 4.: no address on the rendezvous copy


async def test_listener_dropping_the_rendezvous_drops_the_sender_connection(emulator):
    token = sas_token(emulator, "orders")
    watch = LogWatch(emulator)

    async def drop_the_second(full, body, rdv):
        if full.request_target.endswith("/second"):
            await rdv.close()  # mid-request: no answer
            return False
        await _answer(full, body, rdv)

    async with PinningListener(emulator, drop_the_second):
        connector = aiohttp.TCPConnector(limit=1, ssl=emulator.ssl_context())
        async with aiohttp.ClientSession(connector=connector, headers={p.HEADER_TOKEN: token}) as session:
            async with session.post(f"{emulator.http}/orders/big", data=b"x" * 70000) as r:
                assert r.status == 200
            # The service drops the sender's connection, even with a request in flight (no 502).
            with pytest.raises(aiohttp.ServerDisconnectedError):
                async with session.post(f"{emulator.http}/orders/second", data=b"y") as r:
                    await r.read()
    log = watch.text()
    assert "dropping the sender's connection" in log and "ERROR" not in log and "Traceback" not in log


async def test_response_for_a_rendezvous_request_on_the_control_channel_is_ignored(fast_emulator):
    emu = fast_emulator
    token = sas_token(emu, "orders")
    listener: TestListener

    async def on_request(full, body):
        # Answer on the control channel although the request came over a rendezvous.
        await listener.send(p.encode_command(p.ResponseCommand(full.id, 200, "OK", {}, True)), b"wrong socket")
        await asyncio.sleep(2)  # the emulator's response timeout (1 s) passes first
        return 200, {}, b"too late"

    async with TestListener(emu, "orders", token, on_request=on_request) as listener:
        async with aiohttp.ClientSession() as session:
            async with session.post(f"{emu.http}/orders", data=b"x" * 70000, headers={p.HEADER_TOKEN: token}) as r:
                assert r.status == 504


# -- 7., 8. SAS audience host, grace, Bearer -----------------------------------------------------------


def _sas(emu, resource: str, ttl: float = 3600) -> str:
    return sas.generate_sas_token(resource, ROOT, emu.sas_key(ROOT), ttl=ttl)


async def test_sas_for_another_namespace_is_invalid_audience(emulator):
    port = emulator.port
    for resource, expected in (
        (f"http://127.0.0.1:{port}/orders", 101),  # Node form (port kept)
        ("http://127.0.0.1/orders/", 101),  # .NET form (port dropped)
        ("http://other.servicebus.windows.net/orders", 401),  # another namespace, same key
        (f"http://localhost:{port}/orders", 401),  # another host name for the same place
    ):
        url = hc(emulator, "orders", "listen")
        if expected == 101:
            async with ws_connect(emulator, url, _sas(emulator, resource)):
                pass
        else:
            status, reason = await handshake_status(emulator, url, _sas(emulator, resource))
            assert status == 401 and reason.startswith("InvalidAudience"), resource


async def test_bearer_prefix_on_a_sas_token_is_refused(emulator, lenient_emulator):
    token = sas_token(emulator, "orders")
    status, reason = await handshake_status(emulator, hc(emulator, "orders", "listen"), f"Bearer {token}")
    assert status == 401 and reason.startswith("MalformedToken")
    async with ws_connect(lenient_emulator, hc(lenient_emulator, "orders", "listen"), f"Bearer {sas_token(lenient_emulator, 'orders')}"):
        pass  # allowBearerSas true


async def test_no_grace_after_expiry(emulator):
    expired = sas.generate_sas_token(f"http://127.0.0.1:{emulator.port}/orders", ROOT, emulator.sas_key(ROOT),
                                     ttl=-2, now=time.time())
    status, reason = await handshake_status(emulator, hc(emulator, "orders", "listen"), expired)
    assert status == 401 and reason.startswith("ExpiredToken")


# -- URL quoting as seen by clients ------------------------------------------------------------------


async def test_yarl_requoting_client_is_refused(emulator):
    """aiohttp with a plain string URL re-quotes the rendezvous address (yarl decodes %2f): refused."""
    outcome: list = []

    async def accept(cmd, listener):
        async with aiohttp.ClientSession() as session:
            for url in (cmd.address, URL(cmd.address, encoded=True)):
                try:
                    async with session.ws_connect(url, ssl=emulator.ssl_context()) as rdv:
                        outcome.append(101)
                        await rdv.send_str("ok")
                        await rdv.close()
                except aiohttp.WSServerHandshakeError as exc:
                    outcome.append(exc.status)

    token = sas_token(emulator, "echo")
    async with TestListener(emulator, "echo", token, on_accept=accept):
        async with ws_connect(emulator, hc(emulator, "echo", "connect"), token) as ws:
            assert await ws.recv() == "ok"
    assert outcome == [403, 101]


def test_leaf_certificate_is_made_again_when_its_names_change(tmp_path):
    """The rendezvous host must be in the TLS SAN: a state dir from before gets a new leaf."""
    from cryptography import x509

    from emulator.certs import ensure_tls

    def names(path):
        cert = x509.load_pem_x509_certificate(path.read_bytes())
        return {str(n.value) for n in cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value}

    ca, leaf, _ = ensure_tls(tmp_path, ("127.0.0.1",))
    assert names(leaf) == {"localhost", "127.0.0.1"}
    first_ca = ca.read_bytes()
    ca, leaf, _ = ensure_tls(tmp_path, ("127.0.0.1", "127.0.0.2"))
    assert names(leaf) == {"localhost", "127.0.0.1", "127.0.0.2"}
    assert ca.read_bytes() == first_ca  # clients keep trusting the same CA


def test_config_keys_validate():
    from emulator.config import ConfigError, load_config
    from tests.fixtures.emulator import TEST_CONFIG

    cfg = load_config(dict(TEST_CONFIG))
    assert (cfg.rendezvous_host, cfg.control_ping_policy, cfg.token_grace_seconds, cfg.idle_timeout_seconds) == ("127.0.0.2", "close", 0, 240)
    for key, value in (("controlPingPolicy", "ignore"), ("rendezvousHost", "gateway.local"), ("controlResponseLimitBytes", 0)):
        with pytest.raises(ConfigError, match=key):
            load_config({**TEST_CONFIG, key: value})
