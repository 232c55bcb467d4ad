"""Tracking ids for requests and senders: GUID-shaped, unique per process, cheap.

Azure's tracking ids are GUIDs (with a gateway suffix such as ``_G17``, relay-protocol.md §4);
the emulator hands out the GUID part. They only name things (a pending request, a waiting
sender) and are never a secret: what guards a rendezvous address is its ``sb-hc-secret``
(:meth:`emulator.server.RelayServer.rendezvous_address`). So they come from a counter under a
random per-process prefix instead of ``uuid4()`` (an ``os.urandom`` call and a UUID object per
HTTP request, about 2 % of the emulator's CPU per relayed request).
"""

from __future__ import annotations

import itertools
import uuid

_HEAD = str(uuid.uuid4())[:24]  # "xxxxxxxx-xxxx-4xxx-yxxx-": version and variant of a v4 GUID
_counter = itertools.count(int.from_bytes(uuid.uuid4().bytes[:6], "big"))
_MASK = (1 << 48) - 1


def tracking_id() -> str:
    """A new GUID-shaped id, unique within this process (the last 12 hex digits count up)."""
    return f"{_HEAD}{next(_counter) & _MASK:012x}"
