"""Run ``python -m relay agent`` as a subprocess and talk to its health endpoint."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any, AsyncIterator

import aiohttp

from .conftest import REPO_ROOT

WAIT = 60.0  # generous upper bound for a condition to come true (never a timing assertion)


class AgentProcess:
    """A running agent: its process, its JSON log lines so far, its health URL."""

    def __init__(self, proc: asyncio.subprocess.Process):
        self.proc = proc
        self.lines: list[dict[str, Any]] = []
        self.raw = bytearray()
        self.health_url: str | None = None
        self._changed = asyncio.Event()
        self._reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        assert self.proc.stderr is not None
        while line := await self.proc.stderr.readline():
            self.raw.extend(line)
            try:
                record = json.loads(line)
            except ValueError:
                continue
            self.lines.append(record)
            if record.get("event") == "health_listening":
                self.health_url = record["url"]
            self._changed.set()
        self._changed.set()

    async def wait_log(self, predicate, timeout: float = WAIT) -> dict[str, Any]:
        """The first log record (from the start) for which ``predicate(record)`` is true."""
        async with asyncio.timeout(timeout):
            while True:
                for record in self.lines:
                    if predicate(record):
                        return record
                if self.proc.returncode is not None and self._reader.done():
                    raise AssertionError(f"agent exited with {self.proc.returncode}: {self.raw.decode()[-2000:]}")
                self._changed.clear()
                await self._changed.wait()

    def events(self, event: str, connection: str | None = None) -> list[dict[str, Any]]:
        return [r for r in self.lines if r.get("event") == event and (connection is None or r.get("connection") == connection)]

    async def get(self, path: str) -> tuple[int, Any]:
        assert self.health_url, "health endpoint not up"
        async with aiohttp.ClientSession() as session:
            async with session.get(self.health_url + path) as resp:
                text = await resp.text()
                return resp.status, (json.loads(text) if resp.content_type == "application/json" else text)

    async def wait_ready(self, want: bool = True, timeout: float = WAIT) -> Any:
        """Poll /readyz until it says ``want``; return its body."""
        async with asyncio.timeout(timeout):
            while True:
                status, body = await self.get("/readyz")
                if (status == 200) == want:
                    return body
                await asyncio.sleep(0.2)

    async def metrics(self) -> dict[str, float]:
        """``{'name{labels}': value}`` from /metrics."""
        _status, text = await self.get("/metrics")
        out = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                key, _, value = line.rpartition(" ")
                out[key] = float(value)
        return out

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    async def wait_exit(self, timeout: float = WAIT) -> int:
        await asyncio.wait_for(self.proc.wait(), timeout)
        await asyncio.wait_for(self._reader, 5)
        return self.proc.returncode


@contextlib.asynccontextmanager
async def run_agent(config_text: str, tmp_path: Path, *, env: dict[str, str] | None = None,
                    args: tuple[str, ...] = ("--log-format", "json")) -> AsyncIterator[AgentProcess]:
    """Start the agent with ``config_text`` and wait until its health endpoint is up (or for its first lines)."""
    path = tmp_path / "agent.toml"
    path.write_text(config_text)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "relay", "agent", "--config", str(path), *args, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE, env={**os.environ, **(env or {})}, cwd=str(REPO_ROOT),
    )
    agent = AgentProcess(proc)
    agent.config_path = path  # type: ignore[attr-defined]
    try:
        if "enabled = true" in config_text:
            await agent.wait_log(lambda r: r.get("event") == "health_listening")
        yield agent
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 30)
            except asyncio.TimeoutError:
                proc.kill()
                await proc.wait()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(agent._reader, 5)


def toml_str(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid TOML basic string
