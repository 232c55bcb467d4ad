"""Helpers for the devhost tests: run ``python -m devhost`` as a subprocess, read Azurite queues."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from azure.storage.queue.aio import QueueClient

REPO = Path(__file__).resolve().parents[2]
SAMPLE_APP = Path(__file__).resolve().parent / "sample_app"


@dataclass
class DevHost:
    """A running ``python -m devhost``; ``info`` is its first stdout line."""

    process: asyncio.subprocess.Process
    info: dict
    keys: dict
    log_path: Path

    @property
    def url(self) -> str:
        return self.info["url"]

    @property
    def function_key(self) -> str:
        return self.keys["functionKeys"]["default"]

    @property
    def master_key(self) -> str:
        return self.keys["masterKey"]

    async def stop(self) -> int:
        if self.process.returncode is None:
            self.process.terminate()
            try:
                await asyncio.wait_for(self.process.wait(), 15)
            except asyncio.TimeoutError:
                self.process.kill()
                await self.process.wait()
        return self.process.returncode

    async def kill(self) -> None:
        """SIGKILL: no clean shutdown, like a crashed host."""
        if self.process.returncode is None:
            self.process.kill()
            await self.process.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


async def start_devhost(app_dir: Path, state_dir: Path, env: dict, log_path: Path) -> DevHost:
    log = open(log_path, "ab")
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "devhost", "--app-dir", str(app_dir), "--port", "0", "--state-dir", str(state_dir),
        cwd=str(REPO), env={**os.environ, **env}, stdout=asyncio.subprocess.PIPE, stderr=log)
    log.close()
    try:
        line = await asyncio.wait_for(process.stdout.readline(), 30)
    except asyncio.TimeoutError:
        process.kill()
        raise AssertionError("devhost did not print its JSON line:\n" + log_path.read_text())
    if not line:
        await process.wait()
        raise AssertionError(f"devhost exited ({process.returncode}):\n" + log_path.read_text())
    info = json.loads(line)
    keys = json.loads(Path(info["keys_file"]).read_text())
    return DevHost(process, info, keys, log_path)


def app_copy(tmp: Path) -> Path:
    app_dir = tmp / "app"
    shutil.copytree(SAMPLE_APP, app_dir, ignore=shutil.ignore_patterns("__pycache__", "local.settings.json", ".local"))
    return app_dir


def storage_env(azurite, **extra) -> dict:
    return {"AzureWebJobsStorage": azurite.connection_string, "SampleStorage": azurite.connection_string, **extra}


class Queues:
    """Test-side access to Azurite queues (base64 like the Functions host)."""

    def __init__(self, connection_string: str) -> None:
        self.connection_string = connection_string

    def client(self, name: str) -> QueueClient:
        return QueueClient.from_connection_string(self.connection_string, name)

    async def send(self, name: str, text: str) -> None:
        async with self.client(name) as queue:
            try:
                await queue.create_queue()
            except Exception:
                pass
            await queue.send_message(base64.b64encode(text.encode()).decode())

    async def wait_for(self, name: str, predicate, timeout: float = 20.0, count: int = 1) -> list[str]:
        """Peek until ``count`` decoded messages satisfy ``predicate``."""
        deadline = asyncio.get_running_loop().time() + timeout
        found: list[str] = []
        async with self.client(name) as queue:
            while True:
                try:
                    peeked = await queue.peek_messages(max_messages=32)
                except Exception:
                    peeked = []
                found = [t for t in (base64.b64decode(m.content).decode() for m in peeked) if predicate(t)]
                if len(found) >= count or asyncio.get_running_loop().time() > deadline:
                    return found
                await asyncio.sleep(0.2)
