"""``python -m relay``: listen (reverse proxy to a local service), send, and inspect tokens.

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
import logging
import os
import signal
import sys
import time
from datetime import datetime, timezone
from typing import Any

from ._loop import run as run_loop
from .client import HybridConnectionClient
from .connection_string import parse_connection_string
from .credentials import close_credential, get_token_provider
from .errors import (
    AuthorizationFailedError,
    ConnectionLostError,
    EndpointNotFoundError,
    ForbiddenError,
    NoListenerError,
    RejectedError,
    RelayError,
    RelayTimeoutError,
)
from .listener import HybridConnectionListener, RelayedHttpRequest, RelayedHttpResponse
from ._transport import parse_address
from .forward import Forwarder, ForwardTarget, TargetError

_HINTS: list[tuple[type, str]] = [
    (AuthorizationFailedError, "check the SAS key / connection string, or the identity's tenant (python -m relay token ADDRESS)"),
    (ForbiddenError, "grant the identity the Azure Relay Sender/Listener role on the hybrid connection (allow five minutes)"),
    (EndpointNotFoundError, "check the namespace and hybrid connection name in the address"),
    (NoListenerError, "start a listener first: python -m relay listen ADDRESS --forward http://127.0.0.1:8080"),
    (RejectedError, "the listener refused the connection; see the listener's logs"),
    (RelayTimeoutError, "the listener is slow or gone; try again, or raise --timeout"),
    (ConnectionLostError, "check the network path to the namespace (and --ca-file for the local emulator)"),
]

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
        except ValueError as exc:
            raise CliError(f"connection string: {exc}") from None
        credential = cs.credential()
        kwargs.update(cs.client_kwargs())
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
        kwargs["connection_verify"] = args.ca_file
    return address, credential, kwargs, source


def _default_credential() -> Any:
    from azure.identity.aio import DefaultAzureCredential

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
    print(f"address:    {address}")
    print(f"credential: {provider.describe()} (from {source})")
    if token is None:
        print("token:      none (anonymous sender)")
        return 0
    kind = "SAS token" if token.token.startswith("SharedAccessSignature ") else "Entra ID token (JWT), scope https://relay.azure.net/.default"
    expires = datetime.fromtimestamp(token.expires_on, timezone.utc)
    left = token.expires_on - time.time()
    print(f"token:      {kind}")
    print(f"expires:    {expires:%Y-%m-%d %H:%M:%S} UTC (in {left / 60:.1f} min)")
    return 0


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
                async with stream:
                    if data is not None:
                        await stream.send(data if not args.text else data.decode("utf-8"))
                    await stream.shutdown()
                    async with asyncio.timeout(args.timeout):
                        async for message in stream:
                            out = message.encode("utf-8") if isinstance(message, str) else message
                            sys.stdout.buffer.write(out + b"\n")
                            sys.stdout.flush()
                return 0
            method = args.method or ("POST" if data is not None else "GET")
            async with await client.request(method, args.path, body=data, headers=headers or None, timeout=args.timeout) as resp:
                print(f"{resp.status} {resp.reason}", file=sys.stderr)
                async for chunk in resp.iter_chunks():
                    sys.stdout.buffer.write(chunk)
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m relay", description="Azure Relay Hybrid Connections from the command line.")
    parser.add_argument("-v", "--verbose", action="store_true", help="print each relayed request and library warnings")
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
    listen.add_argument("--forward", metavar="URL", help="local service, e.g. http://127.0.0.1:8080 (default: echo); "
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
    token.set_defaults(func=cmd_token)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if getattr(args, "verbose", False) else logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    if not getattr(args, "verbose", False):
        logging.getLogger("azure").setLevel(logging.CRITICAL)
    try:
        return run_loop(args.func(args))  # uvloop when installed
    except CliError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except RelayError as exc:
        print(f"error: {exc}", file=sys.stderr)
        for cls, hint in _HINTS:
            if isinstance(exc, cls):
                print(f"hint: {hint}", file=sys.stderr)
                break
        return 1
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # credential failures from azure-identity and friends
        name = type(exc).__name__
        print(f"error: {name}: {str(exc).splitlines()[0] if str(exc) else ''}", file=sys.stderr)
        if name in ("ClientAuthenticationError", "CredentialUnavailableError"):
            print("hint: no credential worked; pass --connection-string, or --sas-key-name with env RELAY_SAS_KEY", file=sys.stderr)
        return 1
