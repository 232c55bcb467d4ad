"""Timer triggers: NCRONTAB (6 fields, seconds first) or TimeSpan schedules, ``run_on_startup``.

Like the host, one timer function never overlaps itself: the next occurrence is computed after
the previous invocation finished, and ``past_due`` tells the function it runs late.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timedelta, timezone

from azure.functions.timer import TimerRequest
from croniter import croniter

from .hostconfig import parse_timespan
from .invoker import Invoker, describe_exception
from .loader import FunctionInfo

log = logging.getLogger("devhost.timers")

PAST_DUE_AFTER = timedelta(seconds=1)


class Schedule:
    """Next occurrences of an NCRONTAB expression or a TimeSpan interval."""

    def __init__(self, expression: str) -> None:
        self.expression = expression.strip()
        fields = self.expression.split()
        self.interval: timedelta | None = None
        if len(fields) == 1 and ":" in self.expression:
            self.interval = timedelta(seconds=parse_timespan(self.expression, 0))
        elif len(fields) == 6:
            croniter(self.expression, second_at_beginning=True)  # validate now, not at first fire
        else:
            raise ValueError(f"schedule {expression!r}: NCRONTAB needs 6 fields "
                             "({second} {minute} {hour} {day} {month} {day-of-week}) or a TimeSpan")

    def next_after(self, moment: datetime) -> datetime:
        if self.interval is not None:
            return moment + self.interval
        return croniter(self.expression, moment, ret_type=datetime, second_at_beginning=True).get_next(datetime)


class TimerRunner:
    """Fires one timer-triggered function."""

    def __init__(self, info: FunctionInfo, invoker: Invoker) -> None:
        self.info = info
        self.invoker = invoker
        self.schedule = Schedule(info.trigger["schedule"])
        self.run_on_startup = bool(info.trigger.get("runOnStartup"))

    async def _fire(self, due: datetime) -> None:
        late = datetime.now(timezone.utc) - due > PAST_DUE_AFTER
        request = TimerRequest(past_due=late)
        try:
            await self.invoker.call(self.info, {self.info.trigger["name"]: request})
            log.info("timer %s ran (past_due=%s)", self.info.name, late)
        except Exception as exc:
            log.error("timer %s failed: %s", self.info.name, describe_exception(exc))

    async def run(self) -> None:
        if self.run_on_startup:
            await self._fire(datetime.now(timezone.utc))
        due = self.schedule.next_after(datetime.now(timezone.utc))
        while True:
            wait = (due - datetime.now(timezone.utc)).total_seconds()
            if wait > 0:
                await asyncio.sleep(wait)
            await self._fire(due)
            due = self.schedule.next_after(max(due, datetime.now(timezone.utc)))
