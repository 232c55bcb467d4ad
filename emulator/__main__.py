"""``python -m emulator``: run the local Azure Relay + managed-identity emulator.

The first line on stdout is one JSON object describing the endpoints (see
emulator/README.md); everything else is logged to stderr. Stop with Ctrl+C or SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import json
import logging
import os
import secrets
import signal
import sys
import threading
from pathlib import Path

from aiohttp import web

from relay._loop import run as run_loop
from relay.redact import install as install_redaction

from .auth import Authorizer
from .certs import ensure_signing_key, ensure_tls, server_ssl_context
from .config import ConfigError, EmulatorConfig, default_config, load_config
from .identity import IdentityEndpoint, TokenIssuer
from .server import RelayServer

log = logging.getLogger("emulator")


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    # The console script (pip install hybridconnections-emulator) or python -m emulator in this repository.
    prog = "relay-emulator" if os.path.basename(sys.argv[0] or "") == "relay-emulator" else "python -m emulator"
    ap = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    ap.add_argument("--config", type=Path, help="JSON config file (default: a generated local-dev namespace)")
    ap.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    ap.add_argument("--port", type=int, default=0, help="Relay port, WebSocket and HTTP (0 = any free port)")
    ap.add_argument("--identity-port", type=int, default=0, help="managed-identity endpoint port (0 = any)")
    ap.add_argument("--no-tls", action="store_true", help="serve ws:// and http:// instead of wss:// and https://")
    ap.add_argument("--state-dir", type=Path, default=Path(".local/emulator"),
                    help="where the CA, keys and generated secrets live (default .local/emulator)")
    ap.add_argument("--log-level", default=os.environ.get("EMULATOR_LOG_LEVEL", "INFO"))
    ap.add_argument("--exit-on-stdin-eof", action="store_true",
                    help="stop when stdin closes (test harnesses: no orphan emulator if the parent dies)")
    return ap.parse_args(argv)


def _write_private_json(path: Path, data: dict) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2)


def _load(args: argparse.Namespace, state: Path) -> tuple[EmulatorConfig, bool]:
    """Load the config file, or the generated default (kept in the state dir so keys survive restarts)."""
    if args.config is not None:
        try:
            data = json.loads(args.config.read_text())
        except OSError as exc:
            raise ConfigError(f"cannot read config file {args.config}: {exc.strerror}") from None
        except ValueError as exc:
            raise ConfigError(f"config file {args.config} is not valid JSON: {exc}") from None
        return load_config(data), False
    path = state / "default-config.json"
    data = None
    if path.exists():
        try:
            data = json.loads(path.read_text())
            return load_config(data), True
        except (ValueError, ConfigError):
            data = None
    data = default_config()
    _write_private_json(path, data)
    return load_config(data), True


def _identity_header(config: EmulatorConfig, state: Path) -> str:
    if config.identity_header:
        return config.identity_header
    path = state / "identity-header"
    if path.exists():
        value = path.read_text().strip()
        if value:
            return value
    value = secrets.token_urlsafe(24)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(value)
    return value


class PortInUseError(Exception):
    """A port the emulator was told to bind is taken; the message names the port and the option."""


async def _start_site(runner: web.AppRunner, host: str, port: int, option: str, **kwargs) -> None:
    try:
        await web.TCPSite(runner, host, port, reuse_address=True, **kwargs).start()
    except OSError as exc:
        if exc.errno == errno.EADDRNOTAVAIL:
            raise PortInUseError(f"--host {host} is not an address of this machine; use 127.0.0.1 (the default)") from None
        if exc.errno in (errno.EADDRINUSE, errno.EACCES):
            reason = "is already in use" if exc.errno == errno.EADDRINUSE else "needs more privileges (ports below 1024)"
            raise PortInUseError(
                f"{option} {port}: {host}:{port} {reason}; stop the process using it, "
                f"or pass another {option} (0 picks a free port)"
            ) from None
        raise


def _connection_strings(config: EmulatorConfig, authority: str, no_tls: bool, ca_cert: str | None) -> dict[str, str]:
    """Ready-to-use connection strings, one per SAS rule: they work as printed.

    Each names an ``EntityPath`` (the rule's hybrid connection, or the first one for namespace
    rules; an ADDRESS given to ``relay`` overrides it), ``UseDevelopmentEmulator=true`` and, with TLS,
    ``TrustedCaFile`` as an absolute path, so they work from any directory.
    """
    first = next(iter(config.hybrid_connections), None)
    scheme = "ws" if no_tls else "sb"
    out = {}
    for rule in config.sas_rules:
        entity = rule.entity or first
        parts = [f"Endpoint={scheme}://{authority}/"]
        if entity:
            parts.append(f"EntityPath={entity}")
        parts += [f"SharedAccessKeyName={rule.name}", f"SharedAccessKey={rule.key}", "UseDevelopmentEmulator=true"]
        if ca_cert:
            parts.append(f"TrustedCaFile={ca_cert}")
        out[rule.name if rule.name not in out else f"{rule.name}@{entity}"] = ";".join(parts)
    return out


def _authority(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def _bind_rendezvous(runner: web.AppRunner, host: str, port: int, ssl_ctx) -> int:
    """Serve the relay app on the rendezvous host too: the same port when free, else any."""
    for candidate in (port, 0):
        site = web.TCPSite(runner, host, candidate, ssl_context=ssl_ctx, reuse_address=True, backlog=512)
        try:
            await site.start()
        except OSError:
            continue
        server = site._server  # noqa: SLF001 - the bound port of this site only
        return int(server.sockets[0].getsockname()[1]) if candidate == 0 else candidate
    raise RuntimeError(f"cannot bind the rendezvous host {host}")


def _bound_port(runner: web.AppRunner) -> int:
    for addr in runner.addresses:
        if isinstance(addr, tuple):
            return int(addr[1])
    raise RuntimeError("server has no bound address")


async def _serve(args: argparse.Namespace) -> int:
    state = args.state_dir.resolve()
    state.mkdir(parents=True, exist_ok=True)
    config, generated = _load(args, state)
    issuer = TokenIssuer(config, ensure_signing_key(state))
    header = _identity_header(config, state)

    ssl_ctx = None
    ca_cert = None
    if not args.no_tls:
        ca_path, cert, key = ensure_tls(state, ("127.0.0.1", *((config.rendezvous_host,) if config.rendezvous_host else ())))
        ssl_ctx = server_ssl_context(cert, key)
        ca_cert = str(ca_path)

    relay_server = RelayServer(config, Authorizer(config, issuer))
    relay_runner = web.AppRunner(relay_server.app(), access_log=None, handle_signals=False, shutdown_timeout=2.0)
    await relay_runner.setup()
    try:
        await _start_site(relay_runner, args.host, args.port, "--port", ssl_context=ssl_ctx, backlog=512)
    except BaseException:
        await relay_runner.cleanup()
        raise
    port = _bound_port(relay_runner)
    if config.rendezvous_host and args.host not in ("0.0.0.0", "::", "", config.rendezvous_host):
        # Rendezvous addresses point at a second host, as the service's gateway hosts (g0-prod-...):
        # a client that dials anything but the address it was handed fails here.
        rendezvous_port = await _bind_rendezvous(relay_runner, config.rendezvous_host, port, ssl_ctx)
        relay_server.rendezvous_authority = _authority(config.rendezvous_host, rendezvous_port)
    elif config.rendezvous_host:
        relay_server.rendezvous_authority = _authority(config.rendezvous_host, port)

    identity = IdentityEndpoint(config, issuer, header)
    id_runner = web.AppRunner(identity.app(), access_log=None, handle_signals=False, shutdown_timeout=1.0)
    await id_runner.setup()
    try:
        await _start_site(id_runner, args.host, args.identity_port, "--identity-port")
    except BaseException:
        await id_runner.cleanup()
        await relay_runner.cleanup()
        raise
    id_port = _bound_port(id_runner)

    host = args.host if args.host not in ("0.0.0.0", "::", "") else "127.0.0.1"
    authority = f"{host}:{port}"
    effective = dict(config.raw)
    # Spell out the tunables too, so callers see the limits actually in force.
    for key, value in (
        ("tokenLifetimeSeconds", config.token_lifetime_seconds),
        ("listenerLimit", config.listener_limit),
        ("acceptTimeoutSeconds", config.accept_timeout_seconds),
        ("responseTimeoutSeconds", config.response_timeout_seconds),
        ("inlineThresholdBytes", config.inline_threshold_bytes),
        ("tokenGraceSeconds", config.token_grace_seconds),
        ("noListenerHttpStatus", config.no_listener_http_status),
        ("idleTimeoutSeconds", config.idle_timeout_seconds),
        ("listenerRecycleSeconds", config.listener_recycle_seconds),
        ("maxMessageBytes", config.max_message_bytes),
        ("rendezvousHost", config.rendezvous_host),
        ("rendezvousExactUrl", config.rendezvous_exact_url),
        ("controlPingPolicy", config.control_ping_policy),
        ("rendezvousPerSenderConnection", config.rendezvous_per_sender_connection),
        ("rendezvousRequestAddress", config.rendezvous_request_address),
        ("serviceCloseCodes", config.service_close_codes),
        ("strictResponseRouting", config.strict_response_routing),
        ("controlResponseLimitBytes", config.control_response_limit_bytes),
        ("sasAudienceHostCheck", config.sas_audience_host_check),
        ("allowBearerSas", config.allow_bearer_sas),
        ("azureRequestHeaders", config.azure_request_headers),
    ):
        effective.setdefault(key, value)
    effective_path = state / "effective-config.json"
    _write_private_json(effective_path, effective)
    info = {
        "namespace": config.namespace,
        "relay": f"{'ws' if args.no_tls else 'wss'}://{authority}",
        "http": f"{'http' if args.no_tls else 'https'}://{authority}",
        "identity_endpoint": f"http://{host}:{id_port}/msi/token",
        "identity_header": header,
        "ca_cert": ca_cert,
        "port": port,
        "identity_port": id_port,
        "endpoint": f"sb://{authority}/",
        "identity_stats": f"http://{host}:{id_port}/stats",
        "state_dir": str(state),
        "config_file": str(effective_path),
        "pid": os.getpid(),
        "rendezvous": relay_server.rendezvous_authority,
    }
    if generated:
        # Local dev only: the generated keys are random per state dir, handy for connection strings.
        info["connection_strings"] = _connection_strings(config, authority, args.no_tls, ca_cert)
    sys.stdout.write(json.dumps(info) + "\n")
    sys.stdout.flush()
    log.info("relay on %s, identity endpoint on %s, namespace %s", info["relay"], info["identity_endpoint"], config.namespace)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):
            pass
    if args.exit_on_stdin_eof:
        # A daemon thread blocks on stdin; EOF means the parent went away.
        def watch() -> None:
            with contextlib.suppress(Exception):
                while sys.stdin.buffer.read(65536):
                    pass
            loop.call_soon_threadsafe(stop.set)

        threading.Thread(target=watch, name="stdin-watch", daemon=True).start()
    await stop.wait()
    log.info("shutting down")
    await id_runner.cleanup()
    await relay_runner.cleanup()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    logging.basicConfig(
        stream=sys.stderr, level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    install_redaction()  # on the root handler: every logger's records (aiohttp.server's too) are redacted
    try:
        return run_loop(_serve(args))  # uvloop when installed
    except ConfigError as exc:
        print(f"emulator: invalid config: {exc}", file=sys.stderr)
        return 2
    except PortInUseError as exc:
        print(f"emulator: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
