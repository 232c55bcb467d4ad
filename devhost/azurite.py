"""Start Azurite (queues, blobs, tables) from the project's node_modules and tell where it listens.

Used by `make run` and by the tests. With ``ports=None`` Azurite picks free ports
and we read them from its start-up lines; ``account_key=None`` generates a random
key for the dev account (Azurite's AZURITE_ACCOUNTS), so no key lives in code.
``account_key=WELL_KNOWN`` leaves Azurite's built-in development account alone, so
``UseDevelopmentStorage=true`` works (on the default ports 10000-10002).

Persistence: in memory unless ``location`` is given. ``make run`` gives one (``.local/azurite``)
so a developer's queues survive a restart; the tests and the bench run in memory (no LokiJS
autosave of the whole store to disk). Azurite's cost per queue operation (about 2 ms of CPU on
a 2-core machine, most of it its HTTP stack and LokiJS look-ups that scan every stored
message) is its own; ``--silent`` removes the part we controlled, its per-request access log.
"""

from __future__ import annotations

import asyncio
import base64
import os
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
AZURITE_BIN = REPO_ROOT / "node_modules" / ".bin" / "azurite"
ACCOUNT = "devstoreaccount1"
DEFAULT_PORTS = (10000, 10001, 10002)
WELL_KNOWN = "well-known"
"""``account_key`` value meaning: keep Azurite's default dev account (its documented key, not ours)."""
_LISTENING = re.compile(r"Azurite (Blob|Queue|Table) service is successfully listening at (\S+)")


class AzuriteError(RuntimeError):
    """Azurite could not start (not installed, port busy, crashed)."""


@dataclass
class AzuriteProcess:
    """A running Azurite. ``connection_string`` works with every azure-storage client."""

    process: asyncio.subprocess.Process
    endpoints: dict[str, str]
    account_key: str | None
    _drain: asyncio.Task | None = field(default=None, repr=False)

    @property
    def blob_endpoint(self) -> str:
        return f"{self.endpoints['Blob']}/{ACCOUNT}"

    @property
    def queue_endpoint(self) -> str:
        return f"{self.endpoints['Queue']}/{ACCOUNT}"

    @property
    def table_endpoint(self) -> str:
        return f"{self.endpoints['Table']}/{ACCOUNT}"

    @property
    def connection_string(self) -> str:
        if self.account_key is None:  # Azurite's well-known account on the default ports
            return "UseDevelopmentStorage=true"
        return (
            f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={self.account_key};"
            f"BlobEndpoint={self.blob_endpoint};QueueEndpoint={self.queue_endpoint};"
            f"TableEndpoint={self.table_endpoint};"
        )

    def __repr__(self) -> str:  # keep the key out of logs
        return f"AzuriteProcess(endpoints={self.endpoints!r})"

    async def stop(self) -> None:
        if self.process.returncode is None:
            self.process.terminate()
            try:
                await asyncio.wait_for(self.process.wait(), 10)
            except asyncio.TimeoutError:
                self.process.kill()
                await self.process.wait()
        if self._drain:
            self._drain.cancel()


async def start_azurite(
    *,
    ports: tuple[int, int, int] | None = None,
    location: str | os.PathLike | None = None,
    account_key: str | None = None,
    host: str = "127.0.0.1",
    timeout: float = 30.0,
    new_session: bool = False,
    preexec_fn=None,
) -> AzuriteProcess:
    """Start Azurite; in memory unless ``location`` is given. Raises :class:`AzuriteError` with the reason.

    ``new_session=True`` keeps a terminal's Ctrl-C away from Azurite so the caller stops it last.
    """
    if not AZURITE_BIN.exists():
        raise AzuriteError(f"Azurite is not installed at {AZURITE_BIN}; run `make setup` (npm ci).")
    blob, queue, table = ports or (0, 0, 0)
    well_known = account_key == WELL_KNOWN
    if well_known and tuple(ports or ()) != DEFAULT_PORTS:
        raise AzuriteError(f"account_key={WELL_KNOWN!r} needs the default ports {DEFAULT_PORTS} "
                           "(UseDevelopmentStorage=true assumes them)")
    key = None if well_known else (account_key or base64.b64encode(secrets.token_bytes(32)).decode())
    args = [
        # --silent: no access log. Azurite formats and writes a line per request (morgan) that we
        # only drain and drop; the start-up lines we read come from console.log and still appear.
        str(AZURITE_BIN), "--disableTelemetry", "--skipApiVersionCheck", "--loose", "--silent",
        "--blobHost", host, "--queueHost", host, "--tableHost", host,
        "--blobPort", str(blob), "--queuePort", str(queue), "--tablePort", str(table),
    ]
    if location is None:
        args.append("--inMemoryPersistence")
    else:
        Path(location).mkdir(parents=True, exist_ok=True)
        args += ["--location", str(location)]
    env = {k: v for k, v in os.environ.items() if k != "AZURITE_ACCOUNTS"}
    if key is not None:
        env["AZURITE_ACCOUNTS"] = f"{ACCOUNT}:{key}"
    process = await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=env,
        start_new_session=new_session, preexec_fn=preexec_fn,
    )
    endpoints: dict[str, str] = {}
    output: list[str] = []

    async def read_until_ready() -> None:
        while len(endpoints) < 3:
            line = await process.stdout.readline()
            if not line:
                raise AzuriteError("Azurite exited during start-up:\n" + "".join(output[-20:]))
            text = line.decode(errors="replace")
            output.append(text)
            match = _LISTENING.search(text)
            if match:
                endpoints[match.group(1)] = match.group(2).rstrip("/")

    try:
        await asyncio.wait_for(read_until_ready(), timeout)
    except (asyncio.TimeoutError, AzuriteError) as exc:
        if process.returncode is None:
            process.kill()
            await process.wait()
        text = "".join(output[-20:])
        if "EADDRINUSE" in text:
            busy = re.search(r"EADDRINUSE:? address already in use \S*?:(\d+)", text)
            port = busy.group(1) if busy else ports
            raise AzuriteError(f"Azurite could not bind port {port}: another process uses it.") from None
        if isinstance(exc, AzuriteError):
            raise
        raise AzuriteError(f"Azurite did not start within {timeout:.0f} s:\n{text}") from None

    async def drain() -> None:  # keep the pipe empty so Azurite never blocks on stdout
        while await process.stdout.readline():
            pass

    return AzuriteProcess(process, endpoints, key, asyncio.get_running_loop().create_task(drain()))
