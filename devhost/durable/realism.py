"""The real host's timing and failures, for the Durable scheduler (off by default: ``make run`` stays fast).

The Azure Storage provider of Durable Functions picks up orchestration work (control queues) and
activity work (the work-item queue) by *polling* Storage queues; an idle queue is polled less and
less often, up to ``extensions.durableTask.storageProvider.maxQueuePollingInterval`` (30 s when
unset). So every dispatch (an episode after a timer fired or an activity finished, an activity
after it was scheduled) can start up to that long late. The default devhost dispatches at once,
which hides gaps that Azure opens. The *realistic* profile delays each dispatch by a random amount
up to that interval (``worst``: always the full interval) and can inject the failures of a real
worker:

* ``crash``: the worker dies mid-activity. The activity's task is cancelled (its sockets close
  abruptly) and the orchestration gets ``TaskFailed`` ("the worker process exited"), as the
  Functions host reports an invocation whose out-of-process worker died.
* ``recycle``: the instance is recycled mid-activity. The activity is cancelled and its work item
  is delivered again after ``downtime`` seconds (at-least-once), as the Storage provider redelivers
  a work-item message whose lease ran out.
* platform update: every activity that has run ``platformKillSeconds`` (600 s, Flex/Premium's
  10-minute grace, times the time scale) is killed and delivered again after the downtime.

Configuration (environment variables, i.e. app settings; read once at start-up):

``DEVHOST_DURABLE_PROFILE``        ``fast`` (default) or ``realistic``
``DEVHOST_DURABLE_POLL_LAG``       ``random`` (default in realistic), ``worst`` or ``none``
``DEVHOST_DURABLE_TIME_SCALE``     multiplies every modelled duration (lag, grace, downtime); default 1
``DEVHOST_DURABLE_FAULTS``         JSON list of fault rules (below); allowed in either profile
``DEVHOST_DURABLE_PLATFORM_KILL_SECONDS``  override of the 600 s grace (before scaling); 0 disables
``DEVHOST_DURABLE_SEED``           seed of the lag generator (reproducible runs)

A fault rule: ``{"kind": "crash"|"recycle", "activity": "listener_window", "instance": "<id>",
"inputContains": "\\"windowId\\": \\"g1-a\\"", "after": 1.5, "downtime": 2, "times": 1}``: the first
``times`` invocations of ``activity`` (of ``instance``, whose input JSON contains ``inputContains``;
omitted keys match anything) are hit ``after`` seconds (not scaled) after they started. Each hit is
logged at warning level as ``durable fault: ...`` with the time, so tests can line faults up with
what senders saw.

Evidence: Durable Task Azure Storage provider docs (queue polling with back-off to
``maxQueuePollingInterval``, default 30 s; at-least-once work items), Flex Consumption docs
(platform updates drain instances with a 10-minute grace period).
"""

from __future__ import annotations

import json
import logging
import os
import random
from dataclasses import dataclass, field
from typing import Mapping

log = logging.getLogger("devhost.durable")

DEFAULT_MAX_POLLING = 30.0
PLATFORM_GRACE_SECONDS = 600.0
DEFAULT_DOWNTIME = 5.0


class RealismError(ValueError):
    """A DEVHOST_DURABLE_* value is malformed (the message names it)."""


@dataclass
class FaultRule:
    kind: str
    activity: str | None = None
    instance: str | None = None
    input_contains: str | None = None
    after: float = 0.0
    downtime: float = DEFAULT_DOWNTIME
    times: int = 1

    def matches(self, name: str, instance_id: str, input_json: str | None) -> bool:
        return (self.times > 0 and (self.activity is None or self.activity == name)
                and (self.instance is None or self.instance == instance_id)
                and (self.input_contains is None or self.input_contains in (input_json or "")))


@dataclass
class Realism:
    """The timing and fault model the scheduler consults (all zeros: dispatch at once, no faults)."""

    max_poll_lag: float = 0.0
    worst_case: bool = False
    time_scale: float = 1.0
    platform_kill_after: float | None = None
    faults: list[FaultRule] = field(default_factory=list)
    rng: random.Random = field(default_factory=random.Random)

    @property
    def enabled(self) -> bool:
        return bool(self.max_poll_lag or self.faults or self.platform_kill_after)

    def dispatch_lag(self) -> float:
        """Seconds one orchestration or activity dispatch waits (the queue poll that finds it)."""
        if self.max_poll_lag <= 0:
            return 0.0
        return self.max_poll_lag if self.worst_case else self.rng.uniform(0, self.max_poll_lag)

    def fault_for(self, name: str, instance_id: str, input_json: str | None) -> FaultRule | None:
        """The first rule this invocation triggers (its ``times`` is used up), or None."""
        for rule in self.faults:
            if rule.matches(name, instance_id, input_json):
                rule.times -= 1
                return rule
        return None

    def describe(self) -> str:
        return (f"max dispatch lag {self.max_poll_lag:g} s ({'worst case' if self.worst_case else 'random'}), "
                f"platform kill after {self.platform_kill_after or 0:g} s, {len(self.faults)} fault rule(s)")


def _float(environ: Mapping[str, str], name: str, default: float) -> float:
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise RealismError(f"{name} must be a number of seconds, not {raw!r}") from None
    if value < 0:
        raise RealismError(f"{name} must not be negative ({raw!r})")
    return value


def parse_faults(raw: str) -> list[FaultRule]:
    name = "DEVHOST_DURABLE_FAULTS"
    try:
        items = json.loads(raw) if raw.strip() else []
    except json.JSONDecodeError as exc:
        raise RealismError(f"{name} is not JSON ({exc}); expected a list like "
                           '[{"kind": "crash", "activity": "listener_window", "after": 1}]') from None
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        raise RealismError(f"{name} must be a JSON list of objects")
    rules = []
    for item in items:
        if item.get("kind") not in ("crash", "recycle"):
            raise RealismError(f"{name}: kind must be 'crash' or 'recycle', not {item.get('kind')!r}")
        unknown = set(item) - {"kind", "activity", "instance", "inputContains", "after", "downtime", "times"}
        if unknown:
            raise RealismError(f"{name}: unknown key(s) {sorted(unknown)}")
        rules.append(FaultRule(kind=item["kind"], activity=item.get("activity"), instance=item.get("instance"),
                               input_contains=item.get("inputContains"), after=float(item.get("after", 0)),
                               downtime=float(item.get("downtime", DEFAULT_DOWNTIME)), times=int(item.get("times", 1))))
    return rules


def load_realism(max_queue_polling_interval: float | None, environ: Mapping[str, str] = os.environ) -> Realism:
    """The model from ``DEVHOST_DURABLE_*`` and host.json's ``maxQueuePollingInterval`` (seconds or None)."""
    profile = environ.get("DEVHOST_DURABLE_PROFILE", "fast").strip().lower() or "fast"
    if profile not in ("fast", "realistic"):
        raise RealismError(f"DEVHOST_DURABLE_PROFILE must be 'fast' or 'realistic', not {profile!r}")
    scale = _float(environ, "DEVHOST_DURABLE_TIME_SCALE", 1.0)
    lag_mode = environ.get("DEVHOST_DURABLE_POLL_LAG", "").strip().lower() or ("random" if profile == "realistic" else "none")
    if lag_mode not in ("random", "worst", "none"):
        raise RealismError(f"DEVHOST_DURABLE_POLL_LAG must be 'random', 'worst' or 'none', not {lag_mode!r}")
    polling = DEFAULT_MAX_POLLING if max_queue_polling_interval is None else max_queue_polling_interval
    kill = _float(environ, "DEVHOST_DURABLE_PLATFORM_KILL_SECONDS", PLATFORM_GRACE_SECONDS if profile == "realistic" else 0.0)
    seed = environ.get("DEVHOST_DURABLE_SEED", "").strip()
    faults = parse_faults(environ.get("DEVHOST_DURABLE_FAULTS", ""))
    for rule in faults:
        rule.downtime *= scale
    return Realism(
        max_poll_lag=0.0 if lag_mode == "none" else polling * scale,
        worst_case=lag_mode == "worst",
        time_scale=scale,
        platform_kill_after=kill * scale if kill > 0 else None,
        faults=faults,
        rng=random.Random(seed or None),
    )
