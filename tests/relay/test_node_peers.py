"""Interop with Microsoft's Node clients (hyco-ws 1.0.5, hyco-https 1.4.5) through the emulator."""

import asyncio
import hashlib

from relay import RelayedHttpResponse
from tests.emulator.drivers import LogWatch

from .conftest import MB_PATTERN, make_client, make_listener, needs_node, node_listener, run_node, send_uri

pytestmark = needs_node
MB = 1024 * 1024


async def test_our_sender_to_hyco_ws_listener(emulator, client):
    async with node_listener(emulator, "relay_ws_listener.js", "orders"):
        async with await client.connect() as stream:
            await stream.send("hello node")
            assert await stream.receive() == "hello node"
            big = MB_PATTERN(MB)
            await stream.send(big)
            assert await stream.receive() == big


async def test_hyco_ws_sender_to_our_listener(emulator):
    async with make_listener(emulator) as listener:
        async def serve():
            async for stream in listener:
                async with stream:
                    async for message in stream:
                        await stream.send(message)

        task = asyncio.ensure_future(serve())
        try:
            result = await run_node(
                emulator, "relay_ws_sender.js", RELAY_SEND_URI=send_uri(emulator, "orders"),
                RELAY_KEY_NAME="RootManageSharedAccessKey", RELAY_KEY=emulator.sas_key("RootManageSharedAccessKey"),
                RELAY_BINARY_SIZE=str(MB),
            )
        finally:
            task.cancel()
    assert result == {"text": "hello from node", "binaryLength": MB, "binaryOk": True, "closeCode": 1000}


async def test_node_https_sender_to_our_listener(emulator):
    async def handler(request):
        return RelayedHttpResponse(
            200, {"Content-Type": "application/octet-stream", "X-Path": request.path, "X-Custom": request.headers.get("X-Custom", "")},
            (await request.read()),
        )

    async with make_listener(emulator, request_handler=handler):
        env = dict(RELAY_HOST="127.0.0.1", RELAY_PORT=str(emulator.port), RELAY_ENTITY="orders",
                   RELAY_KEY_NAME="RootManageSharedAccessKey", RELAY_KEY=emulator.sas_key("RootManageSharedAccessKey"))
        small = await run_node(emulator, "relay_https_sender.js", RELAY_BODY_SIZE="11", **env)
        big = await run_node(emulator, "relay_https_sender.js", RELAY_BODY_SIZE=str(MB), **env)
    for result, size in ((small, 11), (big, MB)):
        assert result["status"] == 200 and result["via"]
        assert result["length"] == size and result["sha"] == result["sentSha"]


async def test_our_request_to_hyco_https_listener(emulator, client):
    async with node_listener(emulator, "relay_https_listener.js", "orders"):
        resp = await client.request("POST", "/x/y?z=1", body=b"ping", headers={"X-Custom": "c1"})
        assert resp.status == 200
        assert await resp.json() == {"method": "POST", "url": "/orders/x/y?z=1", "length": 4, "custom": "c1"}
        resp = await client.request("GET", "/teapot", headers={"X-Status": "418"})
        assert resp.status == 418  # the listener's own status passes through (it carries Via)
        body = MB_PATTERN(MB)
        resp = await client.request("PUT", "/big", body=body, headers={"X-Response-Size": str(MB)})
        assert resp.status == 200 and resp.headers["x-request-length"] == str(MB)
        assert hashlib.sha256(await resp.read()).digest() == hashlib.sha256(MB_PATTERN(MB)).digest()


async def test_hyco_https_serves_later_requests_over_its_rendezvous(emulator):
    """A large request makes hyco-https open a request rendezvous; the strict emulator pins our
    client's connection to it, and hyco-https answers the later requests there (as Azure expects)."""
    watch = LogWatch(emulator)
    async with node_listener(emulator, "relay_https_listener.js", "orders"), \
            make_client(emulator, max_connections=1) as client:
        resp = await client.request("PUT", "/big", body=MB_PATTERN(200_000))
        assert resp.status == 200 and (await resp.json())["length"] == 200_000
        for i in range(3):
            resp = await client.request("POST", f"/later/{i}", body=b"abc")
            assert resp.status == 200
            assert await resp.json() == {"method": "POST", "url": f"/orders/later/{i}", "length": 3, "custom": None}
    assert "dropping the sender's connection" not in watch.text()
