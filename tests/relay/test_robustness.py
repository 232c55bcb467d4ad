"""Bad input from the service side, and the reconnect schedule, without the emulator.

A tiny aiohttp WebSocket server on 127.0.0.1 plays a misbehaving Relay service: it sends the
listener garbage on its control channel and half-finished requests over rendezvous sockets.
The listener must neither crash nor hang, and must keep serving the well-formed requests.
"""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from aiohttp import WSMsgType, web

from relay import EndpointNotFoundError, HybridConnectionListener, RelayedHttpResponse
from relay import listener as listener_module
from relay.errors import ConnectionLostError, QuotaExceededError


class FakeService:
    """``/$hc/orders``: the control channel (listen) and rendezvous sockets (request) of a fake service."""

    def __init__(self) -> None:
        self.control: web.WebSocketResponse | None = None
        self.connected = asyncio.Event()
        self.received: asyncio.Queue = asyncio.Queue()  # (text, body) pairs the listener sent on the control channel
        self.rendezvous_script: list = []  # what each request rendezvous sends before it closes
        self.rendezvous_seen: asyncio.Queue = asyncio.Queue()
        self.runner: web.AppRunner | None = None
        self.port = 0
        self.sockets: set[web.WebSocketResponse] = set()
        self.closing = False

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/$hc/{tail:.*}", self.handle)
        self.runner = web.AppRunner(app, shutdown_timeout=2.0)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        """Refuse new sockets, close every open one, then the server (aiohttp would otherwise wait
        for open WebSockets, including a listener that reconnected while we were closing)."""
        self.closing = True
        for ws in list(self.sockets):
            await ws.close(code=1011, message=b"service going away")
        if self.runner is not None:
            runner, self.runner = self.runner, None
            await runner.cleanup()

    @property
    def address(self) -> str:
        return f"ws://127.0.0.1:{self.port}/orders"

    def rendezvous_url(self, name: str) -> str:
        return f"ws://127.0.0.1:{self.port}/$hc/orders?sb-hc-action=request&sb-hc-id={name}"

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if self.closing:
            return web.Response(status=503, reason="service going away")
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self.sockets.add(ws)
        if request.query.get("sb-hc-action") == "listen":
            self.control = ws
            self.connected.set()
            pending_text = None
            async for msg in ws:
                if msg.type is WSMsgType.TEXT:
                    if pending_text is not None:
                        await self.received.put((pending_text, None))
                    pending_text = msg.data
                    if not json.loads(msg.data).get("response", {}).get("body"):
                        await self.received.put((pending_text, None))
                        pending_text = None
                elif msg.type is WSMsgType.BINARY:
                    await self.received.put((pending_text, msg.data))
                    pending_text = None
            return ws
        # A request rendezvous: play the next scripted behaviour.
        await self.rendezvous_seen.put(request.query.get("sb-hc-id"))
        for item in self.rendezvous_script.pop(0) if self.rendezvous_script else ():
            if item == "abort":
                request.transport.close()  # type: ignore[union-attr]
                return ws
            if isinstance(item, bytes):
                await ws.send_bytes(item)
            else:
                await ws.send_str(item)
        await ws.close()
        return ws

    async def send(self, *messages: str | bytes) -> None:
        assert self.control is not None
        for message in messages:
            if isinstance(message, bytes):
                await self.control.send_bytes(message)
            else:
                await self.control.send_str(message)

    async def response(self, timeout: float = 5.0) -> tuple[dict, bytes | None]:
        text, body = await asyncio.wait_for(self.received.get(), timeout)
        return json.loads(text)["response"], body


def inline_request(service: FakeService, request_id: str, target: str = "/orders/x", *, body: bool = False, **extra) -> str:
    inner = {"address": service.rendezvous_url(request_id), "id": request_id, "method": "GET",
             "requestTarget": target, "requestHeaders": {"X-A": "1"}, "body": body}
    inner.update(extra)
    return json.dumps({"request": inner})


@pytest.fixture
async def service():
    fake = FakeService()
    await fake.start()
    yield fake
    await fake.stop()


async def echo(request):
    return RelayedHttpResponse(200, {"X-Target": request.target}, b"echo:" + (await request.read()))


async def test_garbage_on_the_control_channel_is_ignored(service):
    events = []
    listener = HybridConnectionListener(service.address, None, request_handler=echo,
                                        on_connecting=lambda: events.append("connecting"))
    async with listener:
        await asyncio.wait_for(service.connected.wait(), 5)
        await service.send(
            "this is not json",
            "[1, 2, 3]",
            "null",
            '{"first": {}, "second": {}}',
            '{"unknownCommand": {"x": 1}}',
            '{"accept": "not an object"}',
            '{"accept": {"id": "no-address"}}',
            '{"request": {"address": 5, "id": "bad-address"}}',
            inline_request(service, "bad-target", target=5),  # wrong type: must not reach the handler
            inline_request(service, "bad-headers", requestHeaders=["a", "b"]),
            '{"response": {"requestId": "x", "statusCode": 200}}',  # a listener never gets responses
            '{"renewToken": {"token": "x"}}',
            "[" * 100_000 + "]" * 100_000,  # nesting deep enough to break a recursive parser
            b"\x00\x01 a binary message nobody announced",
        )
        # A request whose promised body never comes: the next command must still be understood.
        await service.send(inline_request(service, "no-body", body=True), inline_request(service, "after-missing-body"))
        response, _ = await service.response()
        assert response["requestId"] == "after-missing-body" and response["statusCode"] == 200
        # And the listener keeps serving well-formed requests, body and all.
        await service.send(inline_request(service, "good", body=True), b"payload")
        response, body = await service.response()
        assert (response["requestId"], response["statusCode"], body) == ("good", 200, b"echo:payload")
        assert listener.is_online and events == ["connecting"]  # never dropped or reconnected
        assert service.received.empty()  # the malformed requests got no (bogus) answers


async def test_unreachable_rendezvous_addresses_do_not_hurt(service):
    listener = HybridConnectionListener(service.address, None, request_handler=echo, operation_timeout=2.0)
    async with listener:
        await asyncio.wait_for(service.connected.wait(), 5)
        await service.send(
            json.dumps({"accept": {"address": "ws://127.0.0.1:9/$hc/orders?sb-hc-action=accept&sb-hc-id=a", "id": "a"}}),
            json.dumps({"request": {"address": "ws://127.0.0.1:9/$hc/orders?sb-hc-action=request", "id": "r"}}),
        )
        await asyncio.sleep(0.3)
        await service.send(inline_request(service, "good"))
        response, body = await service.response()
        assert response["requestId"] == "good" and body == b"echo:"
        assert listener.is_online


@pytest.mark.parametrize("script", [
    ["abort"],  # the sender (or the service) vanished before the request arrived
    [json.dumps({"request": {"address": "x", "id": "r", "method": "POST", "requestTarget": "/orders/x",
                             "requestHeaders": {}, "body": True}}), "abort"],  # sender gone mid-body
    [json.dumps({"request": {"address": "x", "id": "r", "method": "POST", "requestTarget": "/orders/x",
                             "requestHeaders": {}, "body": True}})],  # clean close where the body should be
    ["{not json"],
    [],  # closed without a word
], ids=["abort", "abort-mid-body", "close-mid-body", "garbage", "empty"])
async def test_broken_request_rendezvous(service, script):
    calls = []

    async def handler(request):
        calls.append((await request.read()))
        return RelayedHttpResponse(200, body=b"ok")

    listener = HybridConnectionListener(service.address, None, request_handler=handler, operation_timeout=2.0)
    async with listener:
        await asyncio.wait_for(service.connected.wait(), 5)
        service.rendezvous_script.append(script)
        started = time.monotonic()
        await service.send(json.dumps({"request": {"address": service.rendezvous_url("big"), "id": "big"}}))
        assert await asyncio.wait_for(service.rendezvous_seen.get(), 5) == "big"
        for _ in range(100):  # the rendezvous task ends quickly (well inside operation_timeout)
            if not listener._tasks:
                break
            await asyncio.sleep(0.02)
        assert not listener._tasks and time.monotonic() - started < 1.9
        assert calls == []  # the handler never sees a truncated request
        await service.send(inline_request(service, "good"))
        response, _ = await service.response()
        assert response["statusCode"] == 200 and listener.is_online


# -- reconnect schedule ---------------------------------------------------------------------------


def test_retry_delays_are_the_dotnet_schedule():
    assert listener_module.RETRY_DELAYS == (0.0, 1.0, 2.0, 5.0, 10.0, 30.0)
    assert [listener_module.retry_delay(n) for n in range(9)] == [0, 1, 2, 5, 10, 30, 30, 30, 30]


class ScriptedListener(HybridConnectionListener):
    """A listener whose connection attempts and backoff waits are scripted (no sockets, no sleeping)."""

    def __init__(self, outcomes):
        super().__init__("sb://ns.example/orders", None)
        self.outcomes = list(outcomes)
        self.waits: list[float] = []
        self._wakeup = asyncio.Event()

    async def _backoff(self, delay: float) -> None:
        self.waits.append(delay)

    async def _connect_control(self):
        outcome = self.outcomes.pop(0)
        if isinstance(outcome, BaseException):
            raise outcome
        self.state = "online"
        return outcome, None


async def test_backoff_grows_stays_at_30_and_resets_once_online():
    lost = ConnectionLostError("down")
    listener = ScriptedListener([lost] * 7 + ["ws1", lost, "ws2"])
    assert await listener._reconnect() == ("ws1", None)
    assert listener.waits == [0, 1, 2, 5, 10, 30, 30, 30]
    listener.waits.clear()
    assert await listener._reconnect() == ("ws2", None)  # the next outage starts from 0 again
    assert listener.waits == [0, 1]


async def test_backoff_retries_quota_but_not_404():
    listener = ScriptedListener([QuotaExceededError("full", status=403), "ws"])
    assert await listener._reconnect() == ("ws", None)
    listener = ScriptedListener([ConnectionLostError("down"), EndpointNotFoundError("gone"), "never"])
    assert await listener._reconnect() is None
    assert listener.waits == [0, 1] and listener.state == "offline"
    assert isinstance(listener.last_error, EndpointNotFoundError) and listener.outcomes == ["never"]


async def test_close_while_reconnecting_reports_offline(service):
    events = []
    listener = HybridConnectionListener(service.address, None, on_connecting=lambda: events.append("connecting"),
                                        on_online=lambda: events.append("online"), on_offline=lambda: events.append("offline"))
    await listener.open()
    await service.stop()  # the service goes away: the listener keeps trying (1 s, 2 s, ...)
    for _ in range(100):
        if events[-1] == "connecting":
            break
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.1)
    assert listener.state == "connecting"
    started = time.monotonic()
    await listener.close()  # does not wait out the backoff
    assert time.monotonic() - started < 0.5
    assert events == ["connecting", "online", "connecting", "offline"] and listener.state == "closed"


async def test_fixed_sas_is_not_renewed_in_a_loop(service, caplog):
    from azure.core.credentials import AzureSasCredential

    from relay.sas import generate_sas_token

    credential = AzureSasCredential(generate_sas_token("http://127.0.0.1/orders/", "rule", "key", ttl=1))
    async with HybridConnectionListener(service.address, credential) as listener:
        await asyncio.sleep(1.6)  # past the token's expiry; the fake service does not enforce it
        assert listener._renew_task is not None and listener._renew_task.done()
        assert listener.token_provider.fetch_count <= 3
        assert "has no newer one" in caplog.text


async def test_renew_token_honours_the_margin(service):
    """``renew_margin`` seconds before expiry the listener sends ``renewToken`` with a fresh token."""
    import base64

    from relay import AadCallbackTokenProvider

    issued = []

    def callback(audience, authority, state):
        claims = base64.urlsafe_b64encode(json.dumps({"exp": time.time() + 2.0, "n": len(issued)}).encode()).rstrip(b"=")
        issued.append(f"eyJhbGciOiJub25lIn0.{claims.decode()}.sig{len(issued)}")
        return issued[-1]

    async with HybridConnectionListener(service.address, AadCallbackTokenProvider(callback), renew_margin=1.5) as listener:
        started = time.monotonic()
        text, _ = await asyncio.wait_for(service.received.get(), 3)
        elapsed = time.monotonic() - started
        assert json.loads(text) == {"renewToken": {"token": issued[1]}}
        # 2 s lifetime, 1.5 s margin, but never sooner than half the remaining life: about 1 s after opening
        assert 0.3 < elapsed < 1.6 and listener.is_online
