"""Helpers for the relay library tests: credentials for the session emulator and Node peers.

Everything runs against the real emulator subprocess (``tests.fixtures.emulator``) on
127.0.0.1; Node peers are Microsoft's hyco-ws / hyco-https packages (tests/peers/relay_*.js).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
from pathlib import Path
from typing import AsyncIterator

import pytest
import pytest_asyncio

from relay import AzureNamedKeyCredential, HybridConnectionClient, HybridConnectionListener

REPO_ROOT = Path(__file__).resolve().parents[2]
PEERS = REPO_ROOT / "tests" / "peers"
ROOT_RULE = "RootManageSharedAccessKey"

needs_node = pytest.mark.skipif(
    shutil.which("node") is None or not (REPO_ROOT / "node_modules" / "hyco-ws").exists(),
    reason="node and node_modules/hyco-ws are needed (make setup)",
)


def root_key(emu) -> AzureNamedKeyCredential:
    return AzureNamedKeyCredential(ROOT_RULE, emu.sas_key(ROOT_RULE))


def make_client(emu, entity: str = "orders", credential=None, **kw) -> HybridConnectionClient:
    kw.setdefault("use_tls", bool(emu.ca_cert))
    return HybridConnectionClient(emu.address(entity), credential if credential is not None else root_key(emu),
                                  connection_verify=emu.ca_cert if emu.ca_cert else True, **kw)


def make_listener(emu, entity: str = "orders", credential=None, **kw) -> HybridConnectionListener:
    kw.setdefault("use_tls", bool(emu.ca_cert))
    return HybridConnectionListener(emu.address(entity), credential if credential is not None else root_key(emu),
                                    connection_verify=emu.ca_cert if emu.ca_cert else True, **kw)


def node_env(emu, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("NODE_TLS_REJECT_UNAUTHORIZED", None)
    if emu.ca_cert:
        env["NODE_EXTRA_CA_CERTS"] = emu.ca_cert
    env.update(extra)
    return env


def listen_uri(emu, entity: str) -> str:
    return f"{emu.relay}/$hc/{entity}?sb-hc-action=listen"


def send_uri(emu, entity: str) -> str:
    return f"{emu.relay}/$hc/{entity}?sb-hc-action=connect"


@contextlib.asynccontextmanager
async def node_listener(emu, script: str, entity: str) -> AsyncIterator[asyncio.subprocess.Process]:
    """Run a Node listener peer until it prints "listening"; stop it on exit."""
    env = node_env(emu, RELAY_LISTEN_URI=listen_uri(emu, entity), RELAY_KEY_NAME=ROOT_RULE, RELAY_KEY=emu.sas_key(ROOT_RULE))
    proc = await asyncio.create_subprocess_exec(
        "node", str(PEERS / script), stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env=env, cwd=str(REPO_ROOT),
    )
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), 15)
        if line.strip() != b"listening":
            err = await proc.stderr.read() if proc.returncode is not None else b""
            raise AssertionError(f"{script} did not come up: {line!r} {err[-500:]!r}")
        yield proc
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 5)
            except asyncio.TimeoutError:
                proc.kill()
                await proc.wait()


async def run_node(emu, script: str, timeout: float = 30, **env: str) -> dict:
    """Run a Node sender peer and parse the JSON line it prints."""
    proc = await asyncio.create_subprocess_exec(
        "node", str(PEERS / script), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env=node_env(emu, **env), cwd=str(REPO_ROOT),
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    lines = [line for line in out.decode().splitlines() if line.startswith("{")]
    assert lines, f"{script} printed nothing useful; stderr: {err.decode()[-800:]}"
    return json.loads(lines[-1])


@pytest_asyncio.fixture(loop_scope="session")
async def client(emulator) -> AsyncIterator[HybridConnectionClient]:
    async with make_client(emulator) as c:
        yield c


def MB_PATTERN(n: int) -> bytes:
    """``n`` bytes of ``i % 251``, the pattern the Node peers use."""
    block = bytes(i % 251 for i in range(251))
    return (block * (n // 251 + 1))[:n]
