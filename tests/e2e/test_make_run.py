"""Smoke test of ``make run`` (``python -m devhost.run``): the whole local stack on free ports in a
temporary state dir, the three printed curl commands run as printed, then Ctrl-C (SIGINT) stops
everything within a few seconds."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import sys
import time
from urllib.parse import urlsplit

import pytest

from tests.devhost.helpers import REPO

from .conftest import wait_until

pytestmark = pytest.mark.slow

BAR = "=" * 100
START_TIMEOUT = 60
ROWS = ("Functions host", "Relay (emulator)", "Azurite blob/queue/table", "On-premises echo")


async def read_banner(process: asyncio.subprocess.Process, stderr_path) -> list[str]:
    """stdout up to the fourth bar line: title, table, curl commands."""
    lines: list[str] = []
    bars = 0

    async def read() -> None:
        nonlocal bars
        while bars < 4:
            raw = await process.stdout.readline()
            if not raw:
                raise AssertionError(f"make run exited ({process.returncode}) before its table:\n"
                                     + "\n".join(lines) + "\n" + stderr_path.read_text(errors="replace")[-3000:])
            line = raw.decode().rstrip("\n")
            lines.append(line)
            bars += line == BAR

    try:
        await asyncio.wait_for(read(), START_TIMEOUT)
    except asyncio.TimeoutError:
        raise AssertionError("make run printed no table within "
                             f"{START_TIMEOUT} s:\n" + stderr_path.read_text(errors="replace")[-3000:]) from None
    return lines


def parse_banner(lines: list[str]) -> tuple[dict[str, str], dict[int, list[str]]]:
    """(table rows by name, shell commands by number) from the printed block."""
    bar_at = [i for i, line in enumerate(lines) if line == BAR]
    rows = {}
    for line in lines[bar_at[1] + 1:bar_at[2]]:
        for name in ROWS:
            if f" {name}  " in line:
                rows[name] = line.split(f" {name}  ", 1)[1].strip()
    commands: dict[int, list[str]] = {}
    current = 0
    for line in lines[bar_at[2] + 1:bar_at[3]]:
        if line.startswith("# ") and line[2:3].isdigit():
            current = int(line[2])
        elif line and not line.startswith("#"):
            commands.setdefault(current, []).append(line)
    return rows, commands


async def shell(script: str, cwd) -> tuple[int, str]:
    """Run a printed command the way a user pastes it (bash, curl)."""
    process = await asyncio.create_subprocess_exec("bash", "-c", script, cwd=str(cwd), stdout=asyncio.subprocess.PIPE,
                                                   stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(process.communicate(), 30)
    return process.returncode, out.decode(errors="replace")


def port_open(url: str) -> bool:
    parts = urlsplit(url)
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex((parts.hostname, parts.port)) == 0


@pytest.mark.skipif(shutil.which("curl") is None, reason="the printed commands are curl commands")
async def test_make_run_prints_working_commands_and_stops_on_ctrl_c(tmp_path):
    local = tmp_path / "local"
    stderr_path = tmp_path / "make-run.stderr"
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    for name in [k for k in env if k.startswith(("IDENTITY_", "MSI_", "RELAY_", "AzureWebJobs", "BridgeStorage"))]:
        del env[name]  # only what make run itself provides
    with open(stderr_path, "wb") as stderr:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "devhost.run", "--local-dir", str(local), "--azurite-ports", "0",
            "--relay-port", "0", "--host-port", "0", "--echo-port", "0",
            cwd=str(tmp_path), env=env, stdout=asyncio.subprocess.PIPE, stderr=stderr)
    try:
        started = time.monotonic()
        lines = await read_banner(process, stderr_path)
        print(f"make run: table after {time.monotonic() - started:.1f} s")
        rows, commands = parse_banner(lines)
        host_url = rows["Functions host"]
        relay_url = rows["Relay (emulator)"].split()[0]
        azurite_urls = [u.strip() for u in rows["Azurite blob/queue/table"].split(",")]
        echo_url = rows["On-premises echo"].split()[0]
        assert all(urlsplit(u).port not in (7071, 9443, 10000, 10001, 10002, 8080)
                   for u in [host_url, relay_url, echo_url, *azurite_urls])  # the overrides, not the defaults
        assert sorted(commands) == [1, 2, 3], lines

        # 1. HTTP round trip to the on-premises echo
        [one] = commands[1]
        code, out = await shell(one, tmp_path)
        echoed = json.loads(out)
        assert code == 0 and echoed["service"] == "on-premises echo", out
        assert (echoed["method"], echoed["path"], echoed["body"]) == ("POST", "/hello", "hi on-prem")

        # 2. queue-driven send via the enqueue helper; the on-prem side answers, the host logs the delivery
        [two] = commands[2]
        code, out = await shell(two, tmp_path)
        assert code == 0 and json.loads(out)["queue"] == "relay-outbound", out
        host_log = local / "logs" / "devhost.log"
        await wait_until(lambda: "delivered 200" in host_log.read_text(errors="replace"), 20,
                         "relay_queue_send to deliver the enqueued envelope")

        # 3. inbound: token, POST to the Relay endpoint (retried until the listener window is online), peek
        token_and_post, peek = "\n".join(commands[3][:2]), commands[3][2]

        async def posted():
            code, out = await shell(token_and_post, tmp_path)
            return out if code == 0 and '"queue"' in out else None

        ack = json.loads(await wait_until(posted, 30, "the inbound POST to be acknowledged", interval=0.5))

        async def peeked():
            code, out = await shell(peek, tmp_path)
            bodies = [json.loads(m["body"]) for m in json.loads(out)["messages"]] if code == 0 else []
            return [b for b in bodies if b["id"] == ack["id"]]

        [message] = await wait_until(peeked, 10, "the inbound message in the queue")
        assert json.loads(message["body"]) == {"hello": "from outside"} and message["path"] == "/demo"

        # Ctrl-C stops everything, children included, within a few seconds
        stopping = time.monotonic()
        process.send_signal(signal.SIGINT)
        code = await asyncio.wait_for(process.wait(), 20)
        took = time.monotonic() - stopping
        text = stderr_path.read_text(errors="replace")
        assert code == 0 and "stopped" in text, text[-3000:]
        assert took < 10, f"stopping took {took:.1f} s"
        still_open = [u for u in [host_url, relay_url, echo_url, *azurite_urls] if port_open(u)]
        assert not still_open, still_open
        print(f"make run: stopped in {took:.1f} s")
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
