"""host.json: the parts devhost honours (queue extension, durableTask hub name and polling, function timeout).

Like the Functions host, app settings named ``AzureFunctionsJobHost__<path>`` override host.json
values (``__`` separates the levels, names are case-insensitive), e.g.
``AzureFunctionsJobHost__extensions__queues__visibilityTimeout=00:00:01``.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

_TIMESPAN = re.compile(r"^(?:(\d+)\.)?(\d+):(\d+):(\d+(?:\.\d+)?)$")


def parse_timespan(value, default: float) -> float:
    """'[d.]hh:mm:ss[.fff]' (the .NET TimeSpan form host.json uses) -> seconds."""
    if value is None:
        return default
    if isinstance(value, (int, float)):
        return float(value)
    match = _TIMESPAN.match(str(value).strip())
    if not match:
        raise ValueError(f"not a TimeSpan (hh:mm:ss): {value!r}")
    days, hours, minutes, seconds = match.groups()
    return int(days or 0) * 86400 + int(hours) * 3600 + int(minutes) * 60 + float(seconds)


@dataclass
class QueueOptions:
    """extensions.queues, with the Functions host defaults (functions-bindings-storage-queue)."""

    batch_size: int = 16
    new_batch_threshold: int | None = None  # default batchSize/2 (per instance; one instance here)
    max_dequeue_count: int = 5
    visibility_timeout: float = 0.0
    max_polling_interval: float = 60.0
    message_encoding: str = "base64"

    @property
    def threshold(self) -> int:
        return self.new_batch_threshold if self.new_batch_threshold is not None else self.batch_size // 2


@dataclass
class HostConfig:
    """The subset of host.json the local host applies."""

    queues: QueueOptions = field(default_factory=QueueOptions)
    hub_name: str = "TestHubName"
    function_timeout: float | None = None
    overridable_states: str = "AnyState"
    max_activities: int | None = None
    max_queue_polling_interval: float | None = None
    """``durableTask.storageProvider.maxQueuePollingInterval`` in seconds (None: unset, the provider's 30 s)."""
    route_prefix: str = "api"
    raw: dict = field(default_factory=dict)
    overrides: list[str] = field(default_factory=list)
    """host.json paths set by ``AzureFunctionsJobHost__*`` settings."""


OVERRIDE_PREFIX = "AzureFunctionsJobHost__"


def apply_overrides(raw: dict, environ=os.environ) -> list[str]:
    """Apply ``AzureFunctionsJobHost__a__b__c`` settings to ``raw`` (host.json) in place; return the paths set.

    Existing keys are matched case-insensitively (the host's configuration is case-insensitive);
    values stay strings, as app settings are.
    """
    applied = []
    for name in sorted(environ):
        if not name.lower().startswith(OVERRIDE_PREFIX.lower()):
            continue
        parts = [p for p in name[len(OVERRIDE_PREFIX):].split("__") if p]
        if not parts:
            continue
        node = raw
        for part in parts[:-1]:
            key = next((k for k in node if k.lower() == part.lower()), part)
            if not isinstance(node.get(key), dict):
                node[key] = {}
            node = node[key]
        last = next((k for k in node if k.lower() == parts[-1].lower()), parts[-1])
        node[last] = environ[name]
        applied.append(".".join(parts))
    return applied


def _get(node: dict, name: str, default=None):
    """``node[name]`` with a case-insensitive key (host.json keys and their overrides)."""
    return next((v for k, v in node.items() if k.lower() == name.lower()), default)


def load_host_config(app_dir: Path, environ=os.environ) -> HostConfig:
    path = app_dir / "host.json"
    raw = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    overrides = apply_overrides(raw, environ)
    ext = _get(raw, "extensions") or {}
    q = {k.lower(): v for k, v in (_get(ext, "queues") or {}).items()}
    queues = QueueOptions(
        batch_size=max(1, min(32, int(q.get("batchsize", 16)))),
        new_batch_threshold=int(q["newbatchthreshold"]) if "newbatchthreshold" in q else None,
        max_dequeue_count=max(1, int(q.get("maxdequeuecount", 5))),
        visibility_timeout=parse_timespan(q.get("visibilitytimeout"), 0.0),
        max_polling_interval=max(0.1, parse_timespan(q.get("maxpollinginterval"), 60.0)),
        message_encoding=str(q.get("messageencoding", "base64")).lower(),
    )
    durable = {k.lower(): v for k, v in (_get(ext, "durableTask") or {}).items()}
    provider = {k.lower(): v for k, v in (_get(_get(ext, "durableTask") or {}, "storageProvider") or {}).items()}
    polling = provider.get("maxqueuepollinginterval")
    timeout = _get(raw, "functionTimeout")
    return HostConfig(
        queues=queues,
        hub_name=str(durable.get("hubname") or "TestHubName"),
        function_timeout=parse_timespan(timeout, 0) if timeout not in (None, "-1") else None,
        overridable_states=str(durable.get("overridableexistinginstancestates") or "AnyState"),
        max_activities=int(durable["maxconcurrentactivityfunctions"]) if "maxconcurrentactivityfunctions" in durable else None,
        max_queue_polling_interval=parse_timespan(polling, 30.0) if polling is not None else None,
        route_prefix=str((_get(_get(ext, "http") or {}, "routePrefix", "api")) or "").strip("/"),
        raw=raw,
        overrides=overrides,
    )
