"""Worker: this library's HTTP listener answers every request with the request body (1 KB echo).

Usage: python -m bench.py_http_listener ADDRESS KEY_NAME KEY CA_FILE [--uvloop]
Prints {"ready": true} once online; then on stdin "mark" starts counting CPU, "report" prints
{"cpu_s": ..., "requests": ...} since the mark, "stop" prints the same and exits.
"""

from __future__ import annotations

import asyncio
import sys
import time

from azure.core.credentials import AzureNamedKeyCredential

from relay import HybridConnectionListener, RelayedHttpResponse

from .stats import emit

served = 0


async def handler(request):
    global served
    served += 1
    return RelayedHttpResponse(status=200, headers={"Content-Type": "application/octet-stream"}, body=await request.read())


async def main(address: str, key_name: str, key: str, ca: str) -> None:
    credential = AzureNamedKeyCredential(key_name, key)
    async with HybridConnectionListener(address, credential, connection_verify=ca, request_handler=handler):
        emit({"ready": True})
        loop = asyncio.get_running_loop()
        cpu0, count0 = time.process_time(), 0
        global served
        while True:
            line = (await loop.run_in_executor(None, sys.stdin.readline)).strip()
            if line == "mark":
                cpu0, count0 = time.process_time(), served
            elif line in ("report", "stop", ""):
                emit({"cpu_s": time.process_time() - cpu0, "requests": served - count0})
                if line != "report":
                    return


if __name__ == "__main__":
    if "--uvloop" in sys.argv:
        import uvloop

        uvloop.install()
    asyncio.run(main(*sys.argv[1:5]))
