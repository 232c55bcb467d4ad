"""``make run``: Azurite, the Relay + managed-identity emulator, the local Functions host serving
function_app.py, and an on-premises demo (an echo service behind ``python -m relay listen``).

Prints one table of endpoints, keys, queues and copy-paste curl commands; Ctrl-C stops
everything (in reverse order). Child logs go to ``.local/logs/``.

The defaults are fixed (Azurite 10000-10002, the emulator on RELAY_NAMESPACE's port, the host on
Host.LocalHttpPort, the echo on 8080, state in ``.local/``); ``--local-dir``, ``--azurite-ports``,
``--relay-port``, ``--identity-port``, ``--host-port`` and ``--echo-port`` (or env ``DEVHOST_RUN_LOCAL_DIR``,
``DEVHOST_RUN_AZURITE_PORTS``, ``DEVHOST_RUN_RELAY_PORT``, ``DEVHOST_RUN_HOST_PORT``,
``DEVHOST_RUN_ECHO_PORT``) change them; port 0 picks a free port. Azurite on other than its
default ports gets a random account key, and the host gets its full connection string instead of
``UseDevelopmentStorage=true``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import shlex
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from aiohttp import web

from .azurite import DEFAULT_PORTS, WELL_KNOWN, AzuriteError, start_azurite
from .ports import PortBusyError, ensure_free
from .settings import SettingsError, load_local_settings

REPO = Path(__file__).resolve().parent.parent
LOCAL = REPO / ".local"
ECHO_PORT = 8080
log = logging.getLogger("devhost.run")


def die_with_parent() -> None:
    """In the child before exec (Linux): get SIGTERM when run.py dies, even by SIGKILL."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class RunError(RuntimeError):
    """A part of the local stack could not start; the message says which and why."""


@dataclass
class Child:
    """A child process whose stdout's first line is JSON (or that reports readiness on stderr)."""

    name: str
    process: asyncio.subprocess.Process
    log_path: Path

    def tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    async def stop(self, timeout: float = 10) -> None:
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), timeout)
            except asyncio.TimeoutError:
                self.process.kill()
                await self.process.wait()


async def spawn(name: str, args: list[str], env: dict, stdout_json: bool = True, timeout: float = 45,
                local: Path = LOCAL) -> tuple[Child, dict]:
    (local / "logs").mkdir(parents=True, exist_ok=True)
    log_path = local / "logs" / f"{name}.log"
    with open(log_path, "wb") as handle:
        process = await asyncio.create_subprocess_exec(
            *args, cwd=str(REPO), env=env, stdout=asyncio.subprocess.PIPE if stdout_json else handle,
            stderr=handle, start_new_session=True, preexec_fn=die_with_parent)  # Ctrl-C reaches run.py only; it stops children in order
    child = Child(name, process, log_path)
    if not stdout_json:
        return child, {}
    try:
        line = await asyncio.wait_for(process.stdout.readline(), timeout)
    except asyncio.TimeoutError:
        await child.stop()
        raise RunError(f"{name} did not start within {timeout:.0f} s; log {log_path}:\n{child.tail()}") from None
    if not line:
        await process.wait()
        raise RunError(f"{name} exited with code {process.returncode}; log {log_path}:\n{child.tail()}")
    # keep draining stdout into the log so the child never blocks on a full pipe
    asyncio.get_running_loop().create_task(_drain(process.stdout, log_path))
    return child, json.loads(line)


async def _drain(stream: asyncio.StreamReader, log_path: Path) -> None:
    with open(log_path, "ab") as handle:
        while line := await stream.readline():
            handle.write(line)
            handle.flush()


async def wait_for_log(child: Child, needle: str, failure: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = child.log_path.read_text(errors="replace") if child.log_path.exists() else ""
        if needle in text:
            return
        if failure in text or child.process.returncode is not None:
            break
        await asyncio.sleep(0.2)
    raise RunError(f"{child.name} is not ready; log {child.log_path}:\n{child.tail()}")


# ---- the on-premises demo service --------------------------------------------------------
async def start_echo(port: int) -> web.AppRunner:
    """A tiny on-premises HTTP service: answers with what it received."""

    async def echo(request: web.Request) -> web.Response:
        body = await request.read()
        return web.json_response({
            "service": "on-premises echo",
            "method": request.method,
            "path": request.path_qs,
            "headers": {k: v for k, v in request.headers.items() if k.lower() not in ("authorization",)},
            "body": body.decode("utf-8", errors="replace"),
        })

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", echo)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner


def runner_port(runner: web.AppRunner) -> int:
    """The port a started AppRunner listens on (the real one when started with port 0)."""
    return int(runner.addresses[0][1])


def shown_path(path: str | Path) -> str:
    """A path for the printed commands: relative to the repository (where `make run` runs) when inside it."""
    path = Path(path).resolve()
    try:
        return str(path.relative_to(REPO))
    except ValueError:
        return str(path)


# ---- the table --------------------------------------------------------------------------
def table(rows: list[tuple[str, str, str]]) -> str:
    width0 = max(len(r[0]) for r in rows)
    width1 = max(len(r[1]) for r in rows)
    lines = []
    for section, name, value in rows:
        lines.append(f"  {section:<{width0}}  {name:<{width1}}  {value}")
    return "\n".join(lines)


def render(host: dict, keys: dict, emulator: dict, azurite, values: dict, outbound: str, inbound: str | None,
           seconds: float, listener_result: str, echo_port: int = ECHO_PORT, local: Path = LOCAL,
           storage_label: str = "UseDevelopmentStorage=true") -> str:
    api = host["api"]
    master = keys["masterKey"]
    fkey = keys["functionKeys"]["default"]
    ca = emulator.get("ca_cert") or ""
    ca_rel = shown_path(ca) if ca else ""
    header_file = shown_path(Path(emulator["state_dir"]) / "identity-header")
    rows = [
        ("endpoints", "Functions host", host["url"]),
        ("", "HTTP API", api),
        ("", "Durable webhooks", host["durable"]),
        ("", "Azurite blob/queue/table", ", ".join(azurite.endpoints[k] for k in ("Blob", "Queue", "Table"))),
        ("", "Relay (emulator)", f"{emulator['relay']}  ({emulator['http']}, namespace 127.0.0.1:{emulator['port']})"),
        ("", "Managed identity", emulator["identity_endpoint"]),
        ("", "On-premises echo", f"http://127.0.0.1:{echo_port}  (relay listener on '{outbound}')"),
        ("keys", "master (admin routes)", master),
        ("", "default function key", fkey),
    ]
    for name, fn in host["functions"].items():
        if fn["trigger"] == "httpTrigger":
            methods = ",".join(fn.get("methods") or ["*"])
            rows.append(("functions", name, f"[{methods}] {host['url']}{fn['route']}  ({fn.get('authLevel', '').lower()})"))
        else:
            detail = fn.get("queue") or fn.get("schedule") or ""
            rows.append(("functions", name, f"{fn['trigger']} {detail}".rstrip()))
    queues = ["relay-outbound", "relay-outbound-poison", values.get("INBOUND_DEFAULT_QUEUE") or "relay-inbound"]
    try:
        queues += [r["queue"] for r in json.loads(values.get("INBOUND_ROUTES") or "[]") if r.get("queue")]
    except (ValueError, TypeError, AttributeError):
        pass
    rows.append(("queues", f"Azurite ({storage_label})", ", ".join(dict.fromkeys(queues))))
    rows.append(("logs", shown_path(local / "logs"),
                 f"azurite data: {shown_path(local / 'azurite')}, host state: {shown_path(local / 'devhost')}"))
    envelope = json.dumps({"connection": outbound, "path": "/from-queue", "method": "POST", "body": "hello via queue"})
    inbound_queue = values.get("INBOUND_DEFAULT_QUEUE") or "relay-inbound"
    curl = [
        "# 1. HTTP round trip: Functions host -> Relay -> on-premises echo",
        f"curl -s -X POST '{api}/relay/{outbound}/hello?code={fkey}' -H 'content-type: text/plain' -d 'hi on-prem'",
        "",
        "# 2. Queue-driven send: enqueue an envelope on relay-outbound (devhost helper route; base64 like the host)",
        f"curl -s -X POST '{host['url']}/admin/devhost/enqueue/relay-outbound?connection=BridgeStorage&code={master}' "
        f"-d {shlex.quote(envelope)}",
        f"#    then watch {shown_path(local / 'logs' / 'devhost.log')} (relay_queue_send) and "
        f"{shown_path(local / 'logs' / 'relay-listener.log')}",
    ]
    if inbound:
        curl += [
            "",
            f"# 3. Inbound: POST to the Relay endpoint of '{inbound}' with a managed-identity token; the listener",
            f"#    orchestration ({listener_result}) puts it on a storage queue, then peek the queue",
            f"TOKEN=$(curl -s -H \"X-IDENTITY-HEADER: $(cat {header_file})\" "
            f"'{emulator['identity_endpoint']}?api-version=2019-08-01&resource=https://relay.azure.net' "
            "| python3 -c 'import json,sys; print(json.load(sys.stdin)[\"access_token\"])')",
            f"curl -s --cacert {ca_rel} -X POST '{emulator['http']}/{inbound}/demo' -H \"ServiceBusAuthorization: $TOKEN\" "
            "-H 'content-type: application/json' -d '{\"hello\": \"from outside\"}'",
            f"curl -s '{host['url']}/admin/devhost/peek/{inbound_queue}?connection=BridgeStorage&code={master}'",
            "#    (INBOUND_ROUTES send other paths to other queues, e.g. /orders* to orders-in)",
        ]
    bar = "=" * 100
    return "\n".join([bar, f"  local stack up in {seconds:.1f} s — Ctrl-C stops everything", bar, table(rows), bar,
                      *curl, bar, *cli_block(emulator, outbound), bar])


def cli_python() -> str:
    """How to call this Python from the repository folder: ``.venv/bin/python`` for `make run`'s venv."""
    if sys.prefix != sys.base_prefix:  # a venv: name its python without resolving the .venv symlink
        venv_python = Path(sys.prefix) / "bin" / "python"
        try:
            return str(venv_python.relative_to(REPO))
        except ValueError:
            return str(venv_python)
    return "python3"


def cli_block(emulator: dict, entity: str) -> list[str]:
    """Ready-to-paste lines for the `relay` CLI (or any program using the library) in another terminal.

    The SAS string is the emulator's own (its generated key, an absolute TrustedCaFile) pointed at
    ``entity``; the managed-identity exports name the identity endpoint, whose port is fixed by
    default (the Relay port + 1), and read the header from its file, so they stay valid across
    restarts and the secret is not printed.
    """
    port = emulator["port"]
    ca = emulator.get("ca_cert")
    scheme = "sb" if ca else "ws"
    dev = ";UseDevelopmentEmulator=true" + (f";TrustedCaFile={ca}" if ca else "")
    header_file = Path(emulator["state_dir"]) / "identity-header"  # absolute: works from any folder
    py = cli_python()
    lines = [f"# Use the relay CLI from another terminal (from this folder); the on-prem echo answers on '{entity}'"]
    for name, text in (emulator.get("connection_strings") or {}).items():
        key = next((part.split("=", 1)[1] for part in text.split(";") if part.startswith("SharedAccessKey=")), None)
        if key and "@" not in name:
            sas = f"Endpoint={scheme}://127.0.0.1:{port}/;EntityPath={entity};SharedAccessKeyName={name};SharedAccessKey={key}{dev}"
            lines += ["# SAS: the CLI reads RELAY_CONNECTION_STRING; your code can pass it to from_connection_string()",
                      f"export RELAY_CONNECTION_STRING={shlex.quote(sas)}",
                      f"{py} -m relay send --data 'hello via the CLI'"]
            break
    managed = f"Endpoint={scheme}://127.0.0.1:{port}/;EntityPath={entity};Authentication=Managed Identity{dev}"
    lines += [
        "# Managed identity: azure-identity needs both (without them it asks 169.254.169.254); the port stays fixed",
        f"export IDENTITY_ENDPOINT={emulator['identity_endpoint']} IDENTITY_HEADER=\"$(cat {shlex.quote(str(header_file))})\"",
        f"{py} -m relay token --connection-string {shlex.quote(managed)}",
    ]
    return lines


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    env = os.environ.get
    parser = argparse.ArgumentParser(prog="python -m devhost.run", description="make run: the whole local stack")
    parser.add_argument("--local-dir", default=env("DEVHOST_RUN_LOCAL_DIR"),
                        help="state and logs (default: .local in the repository; env DEVHOST_RUN_LOCAL_DIR)")
    parser.add_argument("--azurite-ports", default=env("DEVHOST_RUN_AZURITE_PORTS"), metavar="BLOB,QUEUE,TABLE",
                        help="Azurite ports (default 10000,10001,10002; 0 = free ports; env DEVHOST_RUN_AZURITE_PORTS)")
    parser.add_argument("--relay-port", type=int, default=env("DEVHOST_RUN_RELAY_PORT"),
                        help="emulator port (default: the port of RELAY_NAMESPACE; env DEVHOST_RUN_RELAY_PORT)")
    parser.add_argument("--identity-port", type=int, default=env("DEVHOST_RUN_IDENTITY_PORT"),
                        help="managed-identity endpoint port (default: the Relay port + 1, so IDENTITY_ENDPOINT stays "
                             "valid across restarts; 0 with --relay-port 0; env DEVHOST_RUN_IDENTITY_PORT)")
    parser.add_argument("--host-port", type=int, default=env("DEVHOST_RUN_HOST_PORT"),
                        help="Functions host port (default: Host.LocalHttpPort; env DEVHOST_RUN_HOST_PORT)")
    parser.add_argument("--echo-port", type=int, default=env("DEVHOST_RUN_ECHO_PORT"),
                        help=f"on-premises echo port (default {ECHO_PORT}; env DEVHOST_RUN_ECHO_PORT)")
    return parser.parse_args(argv)


def identity_port_for(relay_port: int, given: int | None) -> int:
    """The identity endpoint's port: as given, else the Relay port + 1 (9444), or any free one with a free Relay port.

    A fixed default keeps the printed ``export IDENTITY_ENDPOINT=...`` valid across restarts.
    """
    if given is not None:
        return given
    return relay_port + 1 if relay_port else 0


def azurite_ports(text: str | None) -> tuple[int, int, int]:
    if not text:
        return DEFAULT_PORTS
    try:
        ports = tuple(int(p) for p in text.split(","))
    except ValueError:
        raise RunError(f"--azurite-ports {text!r}: give BLOB,QUEUE,TABLE port numbers (or 0)") from None
    if len(ports) == 1:
        ports = ports * 3
    if len(ports) != 3 or any(not 0 <= p < 65536 for p in ports) or (0 not in ports and len(set(ports)) != 3):
        raise RunError(f"--azurite-ports {text!r}: give three different ports BLOB,QUEUE,TABLE (or 0)")
    return ports  # type: ignore[return-value]


async def run(argv: list[str] | None = None) -> int:
    started = time.monotonic()
    args = parse_args(argv)
    local_dir = Path(args.local_dir).resolve() if args.local_dir else LOCAL
    try:
        local = load_local_settings(REPO)
    except SettingsError as exc:
        raise RunError(str(exc)) from None
    values = {**(local.get("Values") or {})}
    values.update({k: os.environ[k] for k in values if k in os.environ})
    http_port = args.host_port if args.host_port is not None else int((local.get("Host") or {}).get("LocalHttpPort") or 7071)
    namespace = values.get("RELAY_NAMESPACE") or "127.0.0.1:9443"
    relay_port = args.relay_port if args.relay_port is not None else (
        int(namespace.rsplit(":", 1)[1]) if ":" in namespace else 9443)
    echo_port = args.echo_port if args.echo_port is not None else ECHO_PORT
    identity_port = identity_port_for(relay_port, args.identity_port)
    storage_ports = azurite_ports(args.azurite_ports)
    well_known = storage_ports == DEFAULT_PORTS
    for port, what in [(storage_ports[0], "Azurite blob"), (storage_ports[1], "Azurite queue"),
                       (storage_ports[2], "Azurite table"), (relay_port, "the Relay emulator (RELAY_NAMESPACE)"),
                       (identity_port, "the managed-identity endpoint (--identity-port)"),
                       (http_port, "the Functions host (Host.LocalHttpPort)"), (echo_port, "the on-premises echo")]:
        ensure_free(port, what=what)

    stack: list = []
    try:
        azurite = await start_azurite(ports=storage_ports, location=local_dir / "azurite",
                                     account_key=WELL_KNOWN if well_known else None,
                                     new_session=True, preexec_fn=die_with_parent)
        stack.append(azurite)
        py = sys.executable
        emulator_child, emulator = await spawn(
            "emulator", [py, "-m", "emulator", "--port", str(relay_port), "--identity-port", str(identity_port),
                         "--state-dir", str(local_dir / "emulator")],
            dict(os.environ), local=local_dir)
        stack.append(emulator_child)
        echo = await start_echo(echo_port)
        stack.append(echo)
        echo_port = runner_port(echo)
        identity_env = {"IDENTITY_ENDPOINT": emulator["identity_endpoint"], "IDENTITY_HEADER": emulator["identity_header"]}
        host_env = {**os.environ, **identity_env, "RELAY_NAMESPACE": f"127.0.0.1:{emulator['port']}"}
        if emulator.get("ca_cert"):
            host_env["RELAY_CA_FILE"] = emulator["ca_cert"]
        storage_label = "UseDevelopmentStorage=true"
        if not well_known:  # UseDevelopmentStorage=true means the default ports: give the real account instead
            storage_label = "connection string passed to the host"
            for name in ("AzureWebJobsStorage", "BridgeStorage"):
                if (values.get(name) or "").replace(" ", "").lower().startswith("usedevelopmentstorage=true"):
                    host_env[name] = azurite.connection_string
        host_child, host = await spawn("devhost", [py, "-m", "devhost", "--app-dir", str(REPO), "--port", str(http_port),
                                                   "--state-dir", str(local_dir / "devhost")],
                                       host_env, timeout=60, local=local_dir)
        stack.append(host_child)
        keys = json.loads(Path(host["keys_file"]).read_text())

        hcs = set()
        try:
            hcs = {hc["name"] for hc in json.loads(Path(emulator["config_file"]).read_text()).get("hybridConnections", [])}
        except (OSError, ValueError, KeyError, TypeError):
            pass
        outbound_names = [c.strip() for c in (values.get("RELAY_OUTBOUND_CONNECTIONS") or "").split(",") if c.strip()]
        preferred = [values.get("RELAY_DEFAULT_CONNECTION"), *outbound_names]
        outbound = next((c for c in preferred if c and (not hcs or c in hcs)), outbound_names[0] if outbound_names else "orders")
        inbound = next((c.strip() for c in (values.get("RELAY_INBOUND_CONNECTIONS") or "").split(",") if c.strip()), None)

        listener_args = [py, "-m", "relay", "listen", f"sb://127.0.0.1:{emulator['port']}/{outbound}",
                         "--forward", f"http://127.0.0.1:{echo_port}"]
        if emulator.get("ca_cert"):
            listener_args += ["--ca-file", emulator["ca_cert"]]
        listener, _ = await spawn("relay-listener", listener_args, {**os.environ, **identity_env}, stdout_json=False,
                                  local=local_dir)
        stack.append(listener)
        await wait_for_log(listener, "online:", "error:", timeout=30)

        listener_result = "not started"
        if inbound:
            try:
                async with aiohttp.ClientSession() as session:
                    async with session.post(f"{host['api']}/listeners/start/{inbound}",
                                            headers={"x-functions-key": keys["masterKey"]}) as response:
                        listener_result = f"start request: HTTP {response.status}"
            except aiohttp.ClientError as exc:
                listener_result = f"start request failed: {exc}"

        print(render(host, keys, emulator, azurite, values, outbound, inbound, time.monotonic() - started,
                     listener_result, echo_port=echo_port, local=local_dir, storage_label=storage_label), flush=True)

        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        children = [c for c in stack if isinstance(c, Child)]
        waiters = [asyncio.ensure_future(c.process.wait()) for c in children]
        stopper = asyncio.ensure_future(stop.wait())
        done, _ = await asyncio.wait([stopper, *waiters], return_when=asyncio.FIRST_COMPLETED)
        for child, waiter in zip(children, waiters):
            if waiter in done:
                print(f"\n{child.name} exited with code {child.process.returncode}; log {child.log_path}:\n"
                      f"{child.tail()}", file=sys.stderr)
        for task in (stopper, *waiters):
            task.cancel()
        return 0 if stopper in done else 1
    finally:
        print("stopping ...", file=sys.stderr, flush=True)
        for part in reversed(stack):
            try:
                if isinstance(part, web.AppRunner):
                    await part.cleanup()
                else:
                    await part.stop()
            except Exception as exc:  # keep stopping the rest
                print(f"stopping {part!r} failed: {exc}", file=sys.stderr)
        print("stopped", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return asyncio.run(run(argv))
    except (RunError, PortBusyError, AzuriteError) as exc:
        print(f"make run: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
