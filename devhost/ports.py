"""Port checks with a useful error: which process already listens on a port (Linux /proc)."""

from __future__ import annotations

import os
import socket


class PortBusyError(RuntimeError):
    """A port devhost needs is taken; the message names the port and, if visible, the process."""


def _listening_inodes(port: int) -> set[str]:
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as handle:
                next(handle)
                for line in handle:
                    fields = line.split()
                    local, state, inode = fields[1], fields[3], fields[9]
                    if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
                        inodes.add(inode)
        except (OSError, StopIteration, IndexError, ValueError):
            continue
    return inodes


def who_uses(port: int) -> str:
    """'pid 123 (node .../azurite ...)' or 'an unknown process' (other users' processes are hidden)."""
    inodes = _listening_inodes(port)
    if inodes:
        targets = {f"socket:[{i}]" for i in inodes}
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                for fd in os.listdir(f"/proc/{pid}/fd"):
                    if os.readlink(f"/proc/{pid}/fd/{fd}") in targets:
                        with open(f"/proc/{pid}/cmdline", "rb") as handle:
                            cmd = handle.read().replace(b"\0", b" ").decode(errors="replace").strip()
                        return f"pid {pid} ({cmd[:120]})"
            except OSError:
                continue
    return "an unknown process"


def ensure_free(port: int, host: str = "127.0.0.1", what: str = "") -> None:
    """Raise PortBusyError if ``port`` cannot be bound on ``host``."""
    if not port:
        return
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            label = f" for {what}" if what else ""
            raise PortBusyError(f"port {port}{label} is already in use by {who_uses(port)}; "
                                "stop it or choose another port") from None
