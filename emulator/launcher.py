"""Run the emulator as a subprocess and talk to it: for tests, benchmarks and tools.

    async with start_emulator(config) as emu:      # config=None: the built-in default namespace
        emu.address("orders")                       # "sb://127.0.0.1:PORT/orders"
        emu.relay, emu.http                         # "wss://127.0.0.1:PORT", "https://127.0.0.1:PORT"
        emu.identity_env()                          # {"IDENTITY_ENDPOINT": ..., "IDENTITY_HEADER": ...}
        emu.ssl_context()                           # trusts emu.ca_cert (None without TLS)
        await emu.tokens_issued()                   # identity endpoint GET /stats
        emu.sas_key("RootManageSharedAccessKey")
        await emu.restart()                         # same port, keys, CA and signing key

The emulator's stderr goes to ``<state dir>/emulator.log``.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import os
import signal
import ssl
import sys
import tempfile
from pathlib import Path
from typing import Any, AsyncIterator

REPO_ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT = 30.0
_ANY_ENTITY = object()


class EmulatorProcess:
    """A running ``python -m emulator`` subprocess and the endpoints it printed."""

    def __init__(self, config: dict[str, Any] | None, *, tls: bool, port: int, state_dir: Path) -> None:
        self._requested_config = copy.deepcopy(config) if config is not None else None
        self.tls = tls
        self.state_dir = state_dir
        self.log_path = state_dir / "emulator.log"
        self._port = port
        self._identity_port = 0
        self._proc: asyncio.subprocess.Process | None = None
        self._log_file = None
        self.info: dict[str, Any] = {}
        self.config: dict[str, Any] = {}
        self._ssl: ssl.SSLContext | None = None

    # -- endpoints ---------------------------------------------------------------------------

    @property
    def namespace(self) -> str:
        return self.info["namespace"]

    @property
    def relay(self) -> str:
        """``wss://127.0.0.1:PORT`` (``ws://`` without TLS)."""
        return self.info["relay"]

    @property
    def http(self) -> str:
        """``https://127.0.0.1:PORT`` (``http://`` without TLS)."""
        return self.info["http"]

    @property
    def identity_endpoint(self) -> str:
        return self.info["identity_endpoint"]

    @property
    def identity_header(self) -> str:
        return self.info["identity_header"]

    @property
    def ca_cert(self) -> str | None:
        return self.info["ca_cert"]

    @property
    def port(self) -> int:
        return int(self.info["port"])

    @property
    def host(self) -> str:
        """``127.0.0.1:PORT``, the emulator's "namespace host"."""
        return f"127.0.0.1:{self.port}"

    def address(self, entity: str) -> str:
        """The logical address of a hybrid connection: ``sb://127.0.0.1:PORT/{entity}``."""
        return f"sb://127.0.0.1:{self.port}/{entity}"

    def identity_env(self) -> dict[str, str]:
        """Environment for azure-identity's ManagedIdentityCredential (App Service flavour)."""
        return {"IDENTITY_ENDPOINT": self.identity_endpoint, "IDENTITY_HEADER": self.identity_header}

    def ssl_context(self) -> ssl.SSLContext | None:
        """A client SSL context trusting the emulator CA (None when TLS is off); built once, then shared."""
        if not self.ca_cert:
            return None
        if self._ssl is None:
            self._ssl = ssl.create_default_context(cafile=self.ca_cert)
        return self._ssl

    def sas_key(self, rule_name: str, entity: Any = _ANY_ENTITY) -> str:
        """The key of SAS rule ``rule_name``; pass ``entity`` (None = namespace rule) when names repeat."""
        for rule in self.config.get("sasRules", []):
            if rule["name"] == rule_name and (entity is _ANY_ENTITY or rule.get("entity") == entity):
                return rule["key"]
        raise KeyError(f"no SAS rule {rule_name!r} in the emulator config")

    def connection_string(self, rule_name: str, entity: str | None = None) -> str:
        """``Endpoint=sb://127.0.0.1:PORT/;SharedAccessKeyName=..;SharedAccessKey=..[;EntityPath=..]``."""
        cs = f"Endpoint=sb://127.0.0.1:{self.port}/;SharedAccessKeyName={rule_name};SharedAccessKey={self.sas_key(rule_name)}"
        return cs + (f";EntityPath={entity}" if entity else "")

    async def tokens_issued(self) -> int:
        """How many tokens the identity endpoint has issued (``GET /stats``) since this process started."""
        import aiohttp

        async with aiohttp.ClientSession() as session:
            async with session.get(self.info["identity_stats"]) as response:
                return int((await response.json())["tokens_issued"])

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        args = [sys.executable, "-m", "emulator", "--state-dir", str(self.state_dir),
                "--port", str(self._port), "--identity-port", str(self._identity_port), "--exit-on-stdin-eof"]
        if self._requested_config is not None:
            cfg_path = self.state_dir / "test-config.json"
            fd = os.open(cfg_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump(self._requested_config, f)
            args += ["--config", str(cfg_path)]
        if not self.tls:
            args.append("--no-tls")
        self._log_file = open(self.log_path, "ab")
        env = dict(os.environ)
        env.setdefault("PYTHONUNBUFFERED", "1")
        self._proc = await asyncio.create_subprocess_exec(
            *args, cwd=str(REPO_ROOT), stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=self._log_file, env=env,
        )
        assert self._proc.stdout is not None
        try:
            line = await asyncio.wait_for(self._proc.stdout.readline(), START_TIMEOUT)
        except asyncio.TimeoutError:
            await self.stop()
            raise RuntimeError(f"emulator did not start within {START_TIMEOUT}s; see {self.log_path}") from None
        if not line:
            await self._proc.wait()
            raise RuntimeError(f"emulator exited with {self._proc.returncode}: {self._tail()}")
        self.info = json.loads(line)
        self._port = int(self.info["port"])
        self._identity_port = int(self.info["identity_port"])
        self.config = json.loads(Path(self.info["config_file"]).read_text())

    def _tail(self) -> str:
        try:
            return self.log_path.read_text()[-2000:]
        except OSError:
            return "(no log)"

    async def stop(self) -> None:
        """Terminate the process (SIGTERM, then SIGKILL after 5 s)."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.returncode is None:
            if proc.stdin is not None:
                proc.stdin.close()
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 5)
            except asyncio.TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    async def restart(self) -> None:
        """Stop and start again on the same ports with the same keys, CA and signing key."""
        await self.stop()
        for attempt in range(50):
            try:
                await self.start()
                return
            except RuntimeError:
                if attempt == 49:
                    raise
                await asyncio.sleep(0.1)

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.returncode is None


@contextlib.asynccontextmanager
async def start_emulator(
    config: dict[str, Any] | None = None, *, tls: bool = True, port: int = 0
) -> AsyncIterator[EmulatorProcess]:
    """Run ``python -m emulator`` in a temp state dir for the duration of the ``async with``."""
    with tempfile.TemporaryDirectory(prefix="relay-emulator-") as tmp:
        emu = EmulatorProcess(config, tls=tls, port=port, state_dir=Path(tmp))
        await emu.start()
        try:
            yield emu
        finally:
            await emu.stop()
