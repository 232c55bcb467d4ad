"""``relay`` (installed command; ``python -m relay`` in this repository): listen (reverse proxy to a local service), send, and inspect tokens.

Examples::

    # on premises: relay requests for sb://contoso.servicebus.windows.net/orders to a local service
    python -m relay listen sb://contoso.servicebus.windows.net/orders --forward http://127.0.0.1:8080

    # send a request (or a WebSocket message with --ws)
    python -m relay send sb://contoso.servicebus.windows.net/orders --method POST --path /orders --data @order.json

    # which credential is used and when its token expires (never the token itself)
    python -m relay token sb://contoso.servicebus.windows.net/orders

Credentials, first match wins: ``--connection-string`` or env ``RELAY_CONNECTION_STRING``;
``--sas-key-name`` with the key from env ``RELAY_SAS_KEY`` (or ``--sas-key``, visible in the
process list); otherwise ``DefaultAzureCredential`` (environment, workload identity, managed
identity via ``IDENTITY_ENDPOINT``/``IDENTITY_HEADER``, Azure CLI, ...). ``--ca-file`` trusts
the local emulator's CA.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import logging
import os
import signal
import sys
import time
from datetime import datetime, timezone
from typing import Any

from . import __version__
from ._hints import cli_hint, missing_identity_message, summarize_credential_failure
from ._loop import run as run_loop
from .client import HybridConnectionClient
from .connection_string import parse_connection_string, resolve_ca_file
from .credentials import close_credential, get_token_provider
from .errors import EndpointNotFoundError, RelayError
from .listener import HybridConnectionListener, RelayedHttpRequest, RelayedHttpResponse
from ._transport import parse_address
from .forward import Forwarder, ForwardTarget, TargetError, parse_target


class CliError(Exception):
    """A usage problem reported in plain words (exit code 2)."""


def _resolve(args: argparse.Namespace) -> tuple[str, Any, dict[str, Any], str]:
    """``(address, credential, client kwargs, description of the credential source)``."""
    kwargs: dict[str, Any] = {}
    conn_str = args.connection_string or os.environ.get("RELAY_CONNECTION_STRING")
    address = args.address
    if conn_str:
        try:
            cs = parse_connection_string(conn_str)
            address = address or cs.address()
            kwargs.update(cs.client_kwargs())
        except (ValueError, FileNotFoundError) as exc:
            raise CliError(f"connection string: {exc}") from None
        credential = cs.credential()
        source = "connection string"
        if credential is None:
            credential = _default_credential()
            source = "connection string endpoint, DefaultAzureCredential"
    else:
        if not address:
            raise CliError("give an ADDRESS (sb://namespace.servicebus.windows.net/hybrid-connection) or --connection-string")
        key = os.environ.get("RELAY_SAS_KEY") or args.sas_key
        if args.sas_key_name:
            if not key:
                raise CliError("--sas-key-name needs the key in env RELAY_SAS_KEY (or --sas-key)")
            from azure.core.credentials import AzureNamedKeyCredential

            credential, source = AzureNamedKeyCredential(args.sas_key_name, key), "SAS key"
        elif args.anonymous:
            credential, source = None, "anonymous"
        else:
            credential, source = _default_credential(), "DefaultAzureCredential"
    if args.ca_file:
        try:
            kwargs["connection_verify"] = resolve_ca_file(args.ca_file, "--ca-file")
        except FileNotFoundError as exc:
            raise CliError(str(exc)) from None
    args.credential_kind = get_token_provider(credential).kind
    args.resolved_address = address
    return address, credential, kwargs, source


def _default_credential() -> Any:
    try:
        from azure.identity.aio import DefaultAzureCredential
    except ImportError:
        raise CliError(missing_identity_message(
            "Without --connection-string or --sas-key-name, Entra ID (DefaultAzureCredential)")) from None

    return DefaultAzureCredential(exclude_interactive_browser_credential=True)


def _read_data(value: str | None) -> bytes | None:
    if value is None:
        return None
    if value == "@-":
        return sys.stdin.buffer.read()
    if value.startswith("@"):
        try:
            with open(value[1:], "rb") as f:
                return f.read()
        except OSError as exc:
            raise CliError(f"cannot read the --data file {value[1:]!r}: {exc.strerror or exc}") from None
    return value.encode("utf-8")


# -- token --------------------------------------------------------------------------------------


async def cmd_token(args: argparse.Namespace) -> int:
    address, credential, _kwargs, source = _resolve(args)
    provider = get_token_provider(credential)
    try:
        token = await provider.get_token(address)
    finally:
        await close_credential(credential)
    if token is None:
        kind, expires, left = None, None, None
    else:
        kind = "sas" if token.token.startswith("SharedAccessSignature ") else "entra"
        expires = datetime.fromtimestamp(token.expires_on, timezone.utc)
        left = token.expires_on - time.time()
    if args.json:
        _print_json({
            "address": address, "credential": provider.describe(), "source": source, "token_type": kind,
            "expires_on": expires.isoformat().replace("+00:00", "Z") if expires else None,
            "expires_in_seconds": round(left) if left is not None else None,
        })
        return 0
    print(f"address:    {address}")
    print(f"credential: {provider.describe()} (from {source})")
    if token is None:
        print("token:      none (anonymous sender)")
        return 0
    label = "SAS token" if kind == "sas" else "Entra ID token (JWT), scope https://relay.azure.net/.default"
    print(f"token:      {label}")
    print(f"expires:    {expires:%Y-%m-%d %H:%M:%S} UTC (in {left / 60:.1f} min)")
    return 0


def _print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value) + "\n")
    sys.stdout.flush()


def _body_json(data: bytes) -> dict[str, str]:
    """A body in JSON output: ``{"body": text}`` when it is UTF-8, else ``{"bodyBase64": ...}``."""
    try:
        return {"body": data.decode("utf-8")}
    except UnicodeDecodeError:
        return {"bodyBase64": base64.b64encode(data).decode("ascii")}


# -- send ---------------------------------------------------------------------------------------


async def cmd_send(args: argparse.Namespace) -> int:
    address, credential, kwargs, _source = _resolve(args)
    data = _read_data(args.data)
    headers = {}
    for item in args.header or ():
        name, sep, value = item.partition(":")
        if not sep:
            raise CliError(f"--header {item!r} must look like 'Name: value'")
        headers[name.strip()] = value.strip()
    try:
        async with HybridConnectionClient(address, credential, **kwargs) as client:
            if args.ws:
                stream = await client.connect(path=args.path if args.path != "/" else "", headers=headers or None, timeout=args.timeout)
                received: list[dict[str, Any]] = []
                async with stream:
                    if data is not None:
                        await stream.send(data if not args.text else data.decode("utf-8"))
                    await stream.shutdown()
                    async with asyncio.timeout(args.timeout):
                        async for message in stream:
                            if args.json:
                                received.append({"text": message} if isinstance(message, str)
                                                else {"bodyBase64": base64.b64encode(message).decode("ascii")})
                                continue
                            out = message.encode("utf-8") if isinstance(message, str) else message
                            sys.stdout.buffer.write(out + b"\n")
                            sys.stdout.flush()
                if args.json:
                    _print_json({"mode": "ws", "subprotocol": stream.subprotocol, "messages": received,
                                 "close_code": stream.close_code})
                return 0
            method = args.method or ("POST" if data is not None else "GET")
            async with await client.request(method, args.path, body=data, headers=headers or None, timeout=args.timeout) as resp:
                if args.json:
                    body = await resp.read()
                    _print_json({"mode": "http", "status": resp.status, "reason": resp.reason,
                                 "headers": dict(resp.headers.items()), **_body_json(body)})
                    return 0 if resp.status < 400 else 1
                print(f"{resp.status} {resp.reason}", file=sys.stderr, flush=True)
                last = b""
                async for chunk in resp.iter_chunks():
                    sys.stdout.buffer.write(chunk)
                    last = chunk[-1:] or last
                if last and last != b"\n" and sys.stdout.isatty():
                    sys.stdout.buffer.write(b"\n")  # so the shell prompt (or the next line) starts on its own line
                sys.stdout.flush()
                return 0 if resp.status < 400 else 1
    finally:
        await close_credential(credential)


# -- listen -------------------------------------------------------------------------------------


async def cmd_listen(args: argparse.Namespace) -> int:
    target = None
    if args.forward:
        try:
            target = ForwardTarget.build(args.forward, args.allow_path or ())
        except TargetError as exc:
            raise CliError(f"--forward: {exc}") from None
    elif args.allow_path:
        raise CliError("--allow-path needs --forward URL")
    address, credential, kwargs, source = _resolve(args)
    forwarder = Forwarder(target, parse_address(address).entity) if target else None

    async def echo(request: RelayedHttpRequest) -> RelayedHttpResponse:
        return RelayedHttpResponse(200, {"Content-Type": request.headers.get("Content-Type", "application/octet-stream")}, await request.read())

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):
            pass

    def online() -> None:
        print(f"online: listening on {address} (listener id {listener.listener_id})", file=sys.stderr, flush=True)

    def connecting() -> None:
        if listener.last_error is not None:
            print(f"reconnecting after: {listener.last_error}", file=sys.stderr, flush=True)

    def offline() -> None:
        if listener.last_error is not None and not stop.is_set():
            print(f"offline: {listener.last_error}", file=sys.stderr, flush=True)
            stop.set()

    listener = HybridConnectionListener(
        address, credential, request_handler=forwarder.handle if forwarder else echo,
        accept_handler=forwarder.accept if forwarder else None, on_online=online, on_connecting=connecting, on_offline=offline, **kwargs,
    )
    if forwarder:
        await forwarder.start()
    tasks: set[asyncio.Task] = set()
    try:
        print(f"connecting to {address} with {get_token_provider(credential).describe()} (from {source})", file=sys.stderr, flush=True)
        async with listener:
            print(f"forwarding to {args.forward}" if forwarder else "echoing requests (no --forward given)", file=sys.stderr, flush=True)

            async def accept_loop() -> None:
                async for stream in listener:
                    if forwarder:
                        forwarder.spawn_pipe(stream)
                    else:
                        task = asyncio.ensure_future(_echo_ws(stream))
                        tasks.add(task)
                        task.add_done_callback(tasks.discard)

            acceptor = asyncio.ensure_future(accept_loop())
            await stop.wait()
            acceptor.cancel()
        print("closed", file=sys.stderr, flush=True)
        if listener.last_error is not None and isinstance(listener.last_error, EndpointNotFoundError):
            raise listener.last_error
        return 0
    finally:
        for task in tasks:
            task.cancel()
        if forwarder:
            await forwarder.stop()
        await close_credential(credential)


async def _echo_ws(stream: Any) -> None:
    async with stream:
        async for message in stream:
            await stream.send(message)


# -- agent --------------------------------------------------------------------------------------


async def cmd_agent(args: argparse.Namespace) -> int:
    from .agent import ConfigError, serve

    try:
        return await serve(args.config, log_format=args.log_format, check_only=args.check)
    except ConfigError as exc:
        raise CliError(f"{exc}\nsee deploy/agent.example.toml and docs/agent.md") from None


# -- main ---------------------------------------------------------------------------------------


def forward_url(value: str) -> str:
    """``--forward``: an absolute http(s) URL of the local service, checked before anything connects."""
    try:
        parse_target(value, what="--forward", example="--forward")
    except TargetError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return value


def build_parser() -> argparse.ArgumentParser:
    prog = "relay" if os.path.basename(sys.argv[0] or "") == "relay" else "python -m relay"  # the console script, or -m
    parser = argparse.ArgumentParser(prog=prog, description="Azure Relay Hybrid Connections from the command line.")
    parser.add_argument("-v", "--verbose", action="store_true", help="print each relayed request and library warnings")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__} (hybridconnections)")
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("address", nargs="?", help="sb://NAMESPACE.servicebus.windows.net/HYBRID-CONNECTION (optional with a connection string that has EntityPath)")
        p.add_argument("--connection-string", help="Relay connection string (default: env RELAY_CONNECTION_STRING)")
        p.add_argument("--sas-key-name", help="SAS rule name; the key comes from env RELAY_SAS_KEY")
        p.add_argument("--sas-key", help="SAS key (prefer env RELAY_SAS_KEY: arguments are visible to other users)")
        p.add_argument("--anonymous", action="store_true", help="send no token (hybrid connections without client authorization)")
        p.add_argument("--ca-file", help="CA bundle to trust, e.g. the local emulator's ca.pem")
        p.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)

    listen = sub.add_parser("listen", help="listen and forward relayed requests to a local HTTP service")
    common(listen)
    listen.add_argument("--forward", metavar="URL", type=forward_url,
                        help="local service, e.g. http://127.0.0.1:8080 (default: echo); "
                             "requests are forwarded only to this URL and below its path")
    listen.add_argument("--allow-path", metavar="PREFIX", action="append",
                        help="with --forward: forward only paths under PREFIX (relative to the hybrid connection, "
                             "e.g. /api/v1; repeatable); others get 403")
    listen.set_defaults(func=cmd_listen)

    send = sub.add_parser("send", help="send one HTTP request (or WebSocket message with --ws)")
    common(send)
    send.add_argument("--data", help="body: TEXT, @file, or @- for stdin")
    send.add_argument("--ws", action="store_true", help="open a WebSocket, send --data as one message, print what comes back")
    send.add_argument("--text", action="store_true", help="with --ws: send --data as a text message")
    send.add_argument("--method", help="HTTP method (default POST with --data, else GET)")
    send.add_argument("--path", default="/", help="path and query relative to the hybrid connection, e.g. /orders?x=1")
    send.add_argument("--header", "-H", action="append", help="extra header 'Name: value' (repeatable)")
    send.add_argument("--timeout", type=float, default=70.0, help="seconds to wait (default 70)")
    send.add_argument("--json", action="store_true",
                      help="print one JSON object on stdout: status, reason, headers, body (or WebSocket messages)")
    send.set_defaults(func=cmd_send)

    agent = sub.add_parser("agent", help="serve many hybrid connections from one config file (production agent)")
    agent.add_argument("--config", required=True, metavar="FILE", help="TOML file, see deploy/agent.example.toml")
    agent.add_argument("--log-format", choices=("text", "json"), help="override agent.log_format (default text)")
    agent.add_argument("--check", action="store_true",
                       help="validate the file and probe every target, then exit (0: fine, 1: a target is unreachable)")
    agent.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    agent.set_defaults(func=cmd_agent)

    token = sub.add_parser("token", help="show which credential is used and when its token expires (never the token)")
    common(token)
    token.add_argument("--json", action="store_true", help="print one JSON object on stdout (never the token)")
    token.set_defaults(func=cmd_token)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    verbose = getattr(args, "verbose", False)
    logging.basicConfig(level=logging.INFO if verbose else logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    if not verbose:
        logging.getLogger("azure").setLevel(logging.CRITICAL)
    try:
        return run_loop(args.func(args))  # uvloop when installed
    except KeyboardInterrupt:
        return 130
    except CliError as exc:
        return _fail(args, exc, [f"error: {exc}"], 2)
    except RelayError as exc:
        lines = [f"error: {exc}"]
        hint = cli_hint(exc, kind=getattr(args, "credential_kind", None),
                        action="listen" if args.command == "listen" else "send",
                        address=getattr(args, "resolved_address", None) or args.address or "")
        if hint:
            lines.append(f"hint: {hint}")
        return _fail(args, exc, lines, 1)
    except ImportError as exc:
        if (exc.name or "").startswith("azure.identity"):  # raised with our message by the connection string
            message = str(exc) if "pip install" in str(exc) else missing_identity_message("Entra ID")
            return _fail(args, exc, [f"error: {message}"], 2)
        raise
    except (OSError, ValueError) as exc:
        return _fail(args, exc, [f"error: {exc}"], 1)
    except Exception as exc:  # credential failures from azure-identity and friends
        name = type(exc).__name__
        if name in ("ClientAuthenticationError", "CredentialUnavailableError"):
            lines = summarize_credential_failure(exc, verbose=verbose)
            return _fail(args, exc, [f"error: {lines[0]}", *lines[1:]], 1)
        first = str(exc).splitlines()[0] if str(exc) else ""
        return _fail(args, exc, [f"error: {name}: {first}"] + ([] if verbose else ["(run with -v for details)"]), 1)


def _fail(args: argparse.Namespace, exc: BaseException, lines: list[str], code: int) -> int:
    """Report a failure: text on stderr, and with ``--json`` also one ``{"error": ...}`` object on stdout."""
    for line in lines:
        print(line, file=sys.stderr)
    if getattr(args, "json", False):
        hints = [line[len("hint: "):] for line in lines if line.startswith("hint: ")]
        _print_json({"error": {
            "type": type(exc).__name__, "message": lines[0][len("error: "):],
            "status": getattr(exc, "status", None), "is_transient": getattr(exc, "is_transient", None),
            "hint": " ".join(hints) or None,
        }})
    return code
