"""``python -m devhost [--port 7071] [--app-dir .] [--state-dir DIR]``: run the local Functions host.

Prints one JSON line (url, port, functions, keys file) on stdout once it listens, then logs to
stderr. SIGINT/SIGTERM stop it cleanly.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from pathlib import Path

from .loader import LoadError
from .settings import SettingsError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devhost", description=__doc__.splitlines()[0])
    parser.add_argument("--app-dir", default=".", help="folder holding function_app.py and host.json")
    parser.add_argument("--port", type=int, default=None,
                        help="HTTP port (default: local.settings.json Host.LocalHttpPort or 7071; 0 = any free)")
    parser.add_argument("--state-dir", default=os.environ.get("DEVHOST_STATE_DIR"),
                        help="keys.json and durable.sqlite (default: <app-dir>/.local/devhost)")
    parser.add_argument("--log-level", default=os.environ.get("DEVHOST_LOG_LEVEL", "INFO"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("azure", "aiohttp.access", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    app_dir = Path(args.app_dir).resolve()
    state_dir = Path(args.state_dir).resolve() if args.state_dir else app_dir / ".local" / "devhost"
    port = args.port
    if port is None:
        from .settings import load_local_settings
        try:
            port = int((load_local_settings(app_dir).get("Host") or {}).get("LocalHttpPort") or 7071)
        except SettingsError as exc:
            logging.getLogger("devhost").error("%s", exc)
            return 2
    from .server import serve
    try:
        code = asyncio.run(serve(app_dir, state_dir, port))
    except (LoadError, SettingsError) as exc:
        logging.getLogger("devhost").error("%s", exc)
        code = 2
    except KeyboardInterrupt:
        code = 130
    # A sync function still running in a worker thread must not hold the process (the real host
    # kills its worker too); its queue message was released, its activity re-runs next start.
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(code)


if __name__ == "__main__":
    sys.exit(main())
