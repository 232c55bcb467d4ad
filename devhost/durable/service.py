"""The orchestration scheduler: start, replay episodes, run activities and timers, recover.

Each instance replays in order (one episode at a time). Activities run concurrently as asyncio
tasks (sync ones in threads) while the orchestration waits on timers that use the wall clock.
Everything an episode decides is committed to SQLite before activities or timers start, and
results land in the inbox before the next episode. Every scheduled activity is also a work
item in SQLite (the real extension's work-item message) until its result is enqueued or
discarded; after a restart every work item left runs again (at-least-once, like the real
extension) — also those of earlier executions, whose results are then discarded — and timers
re-arm from their ``FireAt``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import traceback
import uuid
from pathlib import Path

from azure.functions import meta
from azure.functions.durable_functions import ActivityTriggerConverter

from ..invoker import Invoker, describe_exception
from ..loader import FunctionIndex
from . import history as h
from .engine import build_context, decide, run_handle
from .realism import FaultRule, Realism
from .store import Instance, Store, WorkItem

log = logging.getLogger("devhost.durable")


class DurableError(Exception):
    """A client request the durable API must refuse (status code attached)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def as_json_text(value) -> str | None:
    """A client-supplied input (already JSON-decoded once) -> the JSON text the SDK df_loads."""
    if value is None:
        return None
    if isinstance(value, str):  # the SDK posts json.dumps(df_dumps(x)): a string holding JSON
        try:
            json.loads(value)
            return value
        except json.JSONDecodeError:
            pass
    return json.dumps(value)


class DurableService:
    """Owns the store and every running orchestration of the app's task hub."""

    def __init__(self, index: FunctionIndex, invoker: Invoker, db_path: Path, hub_name: str,
                 overridable_states: str = "AnyState", max_activities: int | None = None,
                 realism: Realism | None = None) -> None:
        self.index = index
        self.invoker = invoker
        self.store = Store(db_path)
        self.hub_name = hub_name
        self.overridable_states = overridable_states
        self._dirty: set[str] = set()
        self._runners: dict[str, asyncio.Task] = {}
        self._timers: dict[tuple[str, str, int], asyncio.Task] = {}
        self._activities: dict[tuple[str, str, int], asyncio.Task] = {}
        self._activity_slots = asyncio.Semaphore(max_activities or 10 * (os.cpu_count() or 1))
        self._closed = False
        self.realism = realism or Realism()

    # ---- lifecycle -----------------------------------------------------------------------
    async def start(self) -> None:
        """Resume every instance that was Pending or Running when the host stopped.

        Timers of the current executions re-arm; every activity work item left in the store runs
        again, whatever execution it belongs to (a result for an execution that is no longer the
        current one is discarded when it arrives, as the real extension does).
        """
        stamp = h.stamp()
        resumed: dict[str, int] = {}
        for instance_id in self.store.active_ids():
            inst = self.store.get(instance_id)
            pending = {ev["TaskScheduledId"] for _, ex, ev in self.store.inbox(instance_id)
                       if ex == inst.execution_id and "TaskScheduledId" in ev}
            fired = {ev.get("TimerId") for _, ex, ev in self.store.inbox(instance_id) if ex == inst.execution_id}
            done = {e.get("TaskScheduledId") for e in inst.history if e["EventType"] in (h.TASK_COMPLETED, h.TASK_FAILED)}
            fired |= {e.get("TimerId") for e in inst.history if e["EventType"] == h.TIMER_FIRED}
            resumed[instance_id] = 0
            with self.store.transaction():
                for event in inst.history:
                    if event["EventType"] == h.TASK_SCHEDULED and event["EventId"] not in done | pending:
                        # Normally its work item exists already; a store written by an older devhost
                        # has none, so the history is the source for the current execution.
                        self.store.add_work_item(WorkItem(instance_id, inst.execution_id, event["EventId"],
                                                          event["Name"], event.get("Input"), scheduled_time=stamp))
            for event in inst.history:
                if (event["EventType"] == h.TIMER_CREATED and event["EventId"] not in fired
                        and event["EventId"] not in inst.canceled_timers):
                    self._arm_timer(inst, event["EventId"], event["FireAt"])
                    resumed[instance_id] += 1
        for item in self.store.work_items():
            inst = self.store.get(item.instance_id)
            if inst is not None and inst.execution_id == item.execution_id and not inst.is_terminal:
                resumed[item.instance_id] = resumed.get(item.instance_id, 0) + 1
            else:
                moved_on = ("no longer exists" if inst is None else
                            inst.status if inst.execution_id == item.execution_id else "a later execution")
                log.info("durable: activity %s (task %d) of execution %s of instance %s was %s when the host "
                         "stopped: running it again, its result will be discarded (instance: %s)", item.name,
                         item.event_id, item.execution_id, item.instance_id, item.state.lower(), moved_on)
            self._start_activity(item)
        for instance_id, count in resumed.items():
            inst = self.store.get(instance_id)
            if inst is None or inst.is_terminal:
                continue
            log.info("durable: resumed instance %s (%s, %d pending task(s))", instance_id, inst.status, count)
            self._kick(instance_id)

    async def close(self) -> None:
        self._closed = True
        tasks = [*self._runners.values(), *self._timers.values(), *self._activities.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.store.close()

    # ---- client operations (the HTTP API calls these) -----------------------------------
    def start_new(self, name: str, instance_id: str | None, input_value) -> Instance:
        info = self.index.get(name, "orchestrationTrigger")
        if info is None:
            raise DurableError(400, f"The function '{name}' doesn't exist, is disabled, or is not an "
                                    "orchestrator function.")
        instance_id = instance_id or uuid.uuid4().hex
        existing = self.store.get(instance_id)
        if existing and not existing.is_terminal and self.overridable_states.lower() == "nonrunningstates":
            raise DurableError(409, f"An Orchestration instance with the status {existing.status} already "
                                    f"exists (instance ID {instance_id}).")
        input_json = as_json_text(input_value)
        stamp = h.stamp()
        inst = Instance(instance_id, info.name, uuid.uuid4().hex, "Pending", input_json, None, None, stamp, stamp)
        with self.store.transaction():
            self.store.clear_inbox(instance_id)
            self.store.put(inst)
            self.store.enqueue(instance_id, inst.execution_id, h.execution_started(info.name, input_json))
        if existing:
            self._cancel_timers(instance_id)
            log.info("durable: instance %s replaced (was %s)", instance_id, existing.status)
        log.info("durable: started %s instance %s", info.name, instance_id)
        self._kick(instance_id)
        return inst

    def get(self, instance_id: str) -> Instance | None:
        return self.store.get(instance_id)

    def list(self) -> list[Instance]:
        return self.store.all()

    def terminate(self, instance_id: str, reason: str | None) -> None:
        inst = self._require(instance_id)
        if inst.is_terminal:
            raise DurableError(410, f"Instance {instance_id} is {inst.status}")
        inst.status = "Terminated"
        inst.output = json.dumps(reason)
        inst.last_updated_time = h.stamp()
        with self.store.transaction():
            self.store.clear_inbox(instance_id)
            self.store.put(inst)
        self._cancel_timers(instance_id)
        log.info("durable: terminated instance %s", instance_id)

    def raise_event(self, instance_id: str, event_name: str, data) -> None:
        inst = self._require(instance_id)
        if inst.is_terminal:
            raise DurableError(410, f"Instance {instance_id} is {inst.status}")
        with self.store.transaction():
            self.store.enqueue(instance_id, inst.execution_id, h.event_raised(event_name, as_json_text(data)))
        self._kick(instance_id)

    def purge(self, instance_id: str) -> bool:
        self._cancel_timers(instance_id)
        with self.store.transaction():
            return self.store.delete(instance_id)

    def _require(self, instance_id: str) -> Instance:
        inst = self.store.get(instance_id)
        if inst is None:
            raise DurableError(404, f"No instance with ID {instance_id} found.")
        return inst

    # ---- episodes ------------------------------------------------------------------------
    def _kick(self, instance_id: str) -> None:
        if self._closed:
            return
        self._dirty.add(instance_id)
        runner = self._runners.get(instance_id)
        if runner is None or runner.done():
            self._runners[instance_id] = asyncio.get_running_loop().create_task(self._drain(instance_id))

    async def _drain(self, instance_id: str) -> None:
        while instance_id in self._dirty:
            lag = self.realism.dispatch_lag()
            if lag:  # the control-queue poll that finds the message (events arriving meanwhile join it)
                await asyncio.sleep(lag)
            self._dirty.discard(instance_id)
            try:
                await self._episode(instance_id)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("durable: episode of %s crashed; its events stay in the inbox", instance_id)
                await asyncio.sleep(1)
                self._dirty.add(instance_id)

    async def _episode(self, instance_id: str) -> None:
        inst = self.store.get(instance_id)
        if inst is None:
            return
        inbox = self.store.inbox(instance_id)
        current = [(seq, ev) for seq, ex, ev in inbox if ex == inst.execution_id and not inst.is_terminal]
        stale = [seq for seq, ex, ev in inbox if ex != inst.execution_id or inst.is_terminal]
        if not current:
            if stale:
                with self.store.transaction():
                    self.store.consume(stale)
            return
        info = self.index.get(inst.name, "orchestrationTrigger")
        history = inst.history + [h.orchestrator_started()] + [ev for _, ev in current]
        if info is None:
            state, error = {"isDone": False, "actions": []}, f"orchestrator function {inst.name!r} not found"
        else:
            context = build_context(inst, history)
            loop = asyncio.get_running_loop()
            state, error = await loop.run_in_executor(None, run_handle, info.callable, context)
        decision = decide(inst, history, state, error)

        # The episode may have raced with terminate/replace: re-read before committing.
        latest = self.store.get(instance_id)
        if latest is None or latest.execution_id != inst.execution_id or latest.is_terminal:
            return
        inst.history = decision.history
        inst.actions_seen = decision.actions_seen
        inst.custom_status = decision.custom_status
        inst.canceled_timers = sorted(set(inst.canceled_timers) | set(decision.canceled_timers))
        inst.last_updated_time = h.stamp()
        if decision.continued:
            # A new execution of the same instance: fresh history, input carried over.
            inst.execution_id = uuid.uuid4().hex
            inst.input = decision.continue_as_new
            inst.history, inst.actions_seen, inst.canceled_timers = [], 0, []
            inst.status = "Running"
        else:
            inst.status = decision.status
            inst.output = decision.output
        items = [WorkItem(instance_id, inst.execution_id, event_id, name, input_json, scheduled_time=inst.last_updated_time)
                 for event_id, name, input_json in decision.activities] if not inst.is_terminal else []
        with self.store.transaction():
            self.store.consume([seq for seq, _ in current] + stale)
            self.store.put(inst)
            for item in items:
                self.store.add_work_item(item)
            if decision.continued:
                self.store.enqueue(instance_id, inst.execution_id, h.execution_started(inst.name, inst.input))
        if decision.continued:
            self._cancel_timers(instance_id)
            log.info("durable: %s continued as new", instance_id)
            self._kick(instance_id)
            return
        if inst.status == "Failed":
            log.error("durable: orchestration %s failed: %s", instance_id, error)
        elif inst.status == "Completed":
            log.info("durable: orchestration %s completed", instance_id)
        for timer_id in decision.canceled_timers:
            task = self._timers.pop((instance_id, inst.execution_id, timer_id), None)
            if task:
                task.cancel()
        if inst.is_terminal:
            self._cancel_timers(instance_id)
            return
        for item in items:
            self._start_activity(item)
        for timer_id, fire_at in decision.timers:
            self._arm_timer(inst, timer_id, fire_at)

    # ---- timers --------------------------------------------------------------------------
    def _arm_timer(self, inst: Instance, timer_id: int, fire_at: str) -> None:
        key = (inst.instance_id, inst.execution_id, timer_id)
        if key in self._timers:
            return
        self._timers[key] = asyncio.get_running_loop().create_task(self._timer(key, fire_at))

    async def _timer(self, key: tuple[str, str, int], fire_at: str) -> None:
        instance_id, execution_id, timer_id = key
        delay = (h.parse_time(fire_at) - h.now()).total_seconds()
        if delay > 0:
            await asyncio.sleep(delay)
        self._timers.pop(key, None)
        with self.store.transaction():
            self.store.enqueue(instance_id, execution_id, h.timer_fired(timer_id, fire_at))
        self._kick(instance_id)

    def _cancel_timers(self, instance_id: str) -> None:
        for key in [k for k in self._timers if k[0] == instance_id]:
            self._timers.pop(key).cancel()

    # ---- activities ----------------------------------------------------------------------
    def _start_activity(self, item: WorkItem) -> None:
        """Run a persisted work item (at most once at a time in this process)."""
        running = self._activities.get(item.key)
        if running is not None and not running.done():
            return
        task = asyncio.get_running_loop().create_task(self._activity(item))
        self._activities[item.key] = task
        task.add_done_callback(lambda t, key=item.key: self._activities.pop(key, None)
                               if self._activities.get(key) is t else None)

    async def _activity(self, item: WorkItem) -> None:
        while True:
            lag = self.realism.dispatch_lag()
            if lag:  # the work-item queue poll that finds the message
                await asyncio.sleep(lag)
            redeliver_after = await self._activity_once(item)
            if redeliver_after is None:
                return
            await asyncio.sleep(redeliver_after)  # the recycled instance's lease runs out, then redelivery

    async def _invoke_supervised(self, item: WorkItem, call, rule: FaultRule | None):
        """Await the invocation; kill it when a fault rule or the platform-update grace says so.

        Returns ``(None, result)`` when it finished, else ``((kind, downtime), None)`` after cancelling it.
        """
        task = asyncio.ensure_future(call)
        limits = []
        if rule is not None:
            limits.append((rule.after, rule.kind, rule.downtime))
        if self.realism.platform_kill_after:
            limits.append((self.realism.platform_kill_after, "platform-update", 5.0 * self.realism.time_scale))
        if not limits:
            return None, await task
        after, kind, downtime = min(limits, key=lambda x: x[0])
        done, _ = await asyncio.wait({task}, timeout=after)
        if done:
            return None, task.result()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        log.warning("durable fault: %s of activity %s (instance %s, task %d, input %s) at %s after %.1f s",
                    kind, item.name, item.instance_id, item.event_id, (item.input or "")[:200], h.stamp(), after)
        return (kind, downtime), None

    async def _activity_once(self, item: WorkItem) -> float | None:
        """One delivery of a work item; returns the downtime before the next delivery, None when done."""
        instance_id, execution_id, event_id, name = item.instance_id, item.execution_id, item.event_id, item.name
        info = self.index.get(name, "activityTrigger")
        async with self._activity_slots:
            if self._closed:
                return None
            attempt = self.store.mark_work_item_running(item.key, h.stamp())
            if attempt > 1:
                log.info("durable: activity %s (instance %s, task %d) delivered again (attempt %d)",
                         name, instance_id, event_id, attempt)
            if info is None:
                event = h.task_failed(event_id, f"The activity function '{name}' doesn't exist.",
                                      "devhost found no activityTrigger function with this name")
            else:
                try:
                    argument = ActivityTriggerConverter.decode(
                        meta.Datum(type="json", value=item.input if item.input is not None else "null"),
                        trigger_metadata=None)
                    rule = self.realism.fault_for(name, instance_id, item.input)
                    killed, result = await self._invoke_supervised(
                        item, self.invoker.call(info, {info.trigger["name"]: argument}), rule)
                    if killed is not None and killed[0] != "crash":
                        return killed[1]  # recycled: the work item stays and is delivered again
                    if killed is not None:
                        reason = "the worker process exited unexpectedly (devhost fault injection: crash)"
                        event = h.task_failed(event_id, f"Activity function '{name}' failed: {reason}", reason)
                    else:
                        encoded = ActivityTriggerConverter.encode(result.return_value, expected_type=None).value
                        event = h.task_completed(event_id, encoded)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    log.error("durable: activity %s (instance %s) failed: %s", name, instance_id,
                              describe_exception(exc))
                    event = h.task_failed(event_id, f"Activity function '{name}' failed: {describe_exception(exc)}",
                                          "".join(traceback.format_exception(exc)))
        if self._closed:
            return None  # the work item stays: it runs again on the next start
        inst = self.store.get(instance_id)
        if inst is None or inst.execution_id != execution_id or inst.is_terminal:
            with self.store.transaction():
                self.store.delete_work_item(item.key)
            state = ("no longer exists" if inst is None else
                     f"is {inst.status}" if inst.execution_id == execution_id else "continued as new")
            log.info("durable: result of activity %s (task %d, execution %s) discarded: instance %s %s",
                     name, event_id, execution_id, instance_id, state)
            return None
        with self.store.transaction():
            self.store.enqueue(instance_id, execution_id, event)
            self.store.delete_work_item(item.key)
        self._kick(instance_id)
        return None
