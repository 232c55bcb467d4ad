"""Worker: how many tokens does this library fetch for 10,000 sends? (Target: 1 with a one-hour token.)

The sender authenticates with azure-identity's real ManagedIdentityCredential against the
emulator's managed-identity endpoint (IDENTITY_ENDPOINT/IDENTITY_HEADER in the environment);
a SAS-authenticated listener in the same process answers. The runner reads the emulator's
token counter before and after.
Usage: python -m bench.token_fetches ADDRESS KEY_NAME KEY CA_FILE SENDS CONCURRENCY
"""

from __future__ import annotations

import asyncio
import sys
import time

from azure.core.credentials import AzureNamedKeyCredential
from azure.identity.aio import ManagedIdentityCredential

from relay import HybridConnectionClient, HybridConnectionListener, RelayedHttpResponse

from .stats import emit


async def main(address: str, key_name: str, key: str, ca: str, sends: int, concurrency: int) -> None:
    async def ok(request):
        return RelayedHttpResponse(status=200, body=b"ok")

    listener = HybridConnectionListener(
        address, AzureNamedKeyCredential(key_name, key), connection_verify=ca, request_handler=ok
    )
    async with listener, ManagedIdentityCredential() as credential:
        async with HybridConnectionClient(address, credential, connection_verify=ca) as client:
            remaining = sends
            start = time.perf_counter()

            async def worker() -> None:
                nonlocal remaining
                while remaining > 0:
                    remaining -= 1
                    response = await client.request("POST", "/", body=b"x" * 64)
                    await response.read()
                    if response.status != 200:
                        raise RuntimeError(f"send failed: {response.status} {response.reason}")

            await asyncio.gather(*(worker() for _ in range(concurrency)))
            elapsed = time.perf_counter() - start
    emit({"sends": sends, "seconds": round(elapsed, 3), "per_second": round(sends / elapsed, 1)})


if __name__ == "__main__":
    address, key_name, key, ca, sends, concurrency = sys.argv[1:7]
    asyncio.run(main(address, key_name, key, ca, int(sends), int(concurrency)))
