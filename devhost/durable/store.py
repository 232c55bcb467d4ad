"""Orchestration instances and their pending events in SQLite (stdlib sqlite3).

One row per instance holds the current execution's history; ``inbox`` holds events that
arrived (activity results, fired timers, raised events, ExecutionStarted) but were not yet
replayed. An episode consumes inbox rows and writes the new history in one transaction, so a
crash at any point either replays the events again or has them already in history.

``activities`` holds activity work items (the real extension's work-item queue messages): one
row per scheduled activity, written with the episode that scheduled it and deleted only together
with the enqueueing of its result (or when its result is discarded because the execution moved
on), so every row left after a crash is an activity to run again, whatever its execution.
The table is created when missing, so an older ``durable.sqlite`` opens unchanged.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS instances (
    instance_id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    execution_id TEXT NOT NULL,
    status TEXT NOT NULL,
    input TEXT,
    output TEXT,
    custom_status TEXT,
    created_time TEXT NOT NULL,
    last_updated_time TEXT NOT NULL,
    history TEXT NOT NULL DEFAULT '[]',
    actions_seen INTEGER NOT NULL DEFAULT 0,
    canceled_timers TEXT NOT NULL DEFAULT '[]'
);
CREATE TABLE IF NOT EXISTS inbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    instance_id TEXT NOT NULL,
    execution_id TEXT NOT NULL,
    event TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS inbox_instance ON inbox(instance_id, seq);
CREATE TABLE IF NOT EXISTS activities (
    instance_id TEXT NOT NULL,
    execution_id TEXT NOT NULL,
    event_id INTEGER NOT NULL,
    name TEXT NOT NULL,
    input TEXT,
    state TEXT NOT NULL DEFAULT 'Scheduled',
    dequeue_count INTEGER NOT NULL DEFAULT 0,
    scheduled_time TEXT NOT NULL,
    started_time TEXT,
    PRIMARY KEY (instance_id, execution_id, event_id)
);
"""

TERMINAL = {"Completed", "Failed", "Terminated", "Canceled"}


@dataclass
class WorkItem:
    """An activity work item: one scheduled activity of one execution."""

    instance_id: str
    execution_id: str
    event_id: int
    name: str
    input: str | None
    state: str = "Scheduled"  # Scheduled | Running
    dequeue_count: int = 0
    scheduled_time: str = ""
    started_time: str | None = None

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.instance_id, self.execution_id, self.event_id)


_ITEM_COLUMNS = ("instance_id", "execution_id", "event_id", "name", "input", "state", "dequeue_count",
                 "scheduled_time", "started_time")


@dataclass
class Instance:
    """An orchestration instance (its current execution)."""

    instance_id: str
    name: str
    execution_id: str
    status: str
    input: str | None
    output: str | None  # JSON text
    custom_status: str | None  # JSON text
    created_time: str
    last_updated_time: str
    history: list = field(default_factory=list)
    actions_seen: int = 0
    canceled_timers: list = field(default_factory=list)

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL


_COLUMNS = ("instance_id", "name", "execution_id", "status", "input", "output", "custom_status",
            "created_time", "last_updated_time", "history", "actions_seen", "canceled_timers")


class Store:
    """Synchronous, single-connection store; used from the event loop thread only."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(str(path), isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(SCHEMA)

    def close(self) -> None:
        self.db.close()

    def _row(self, row) -> Instance:
        values = dict(zip(_COLUMNS, row))
        values["history"] = json.loads(values["history"])
        values["canceled_timers"] = json.loads(values["canceled_timers"])
        return Instance(**values)

    def get(self, instance_id: str) -> Instance | None:
        row = self.db.execute(f"SELECT {','.join(_COLUMNS)} FROM instances WHERE instance_id=?",
                              (instance_id,)).fetchone()
        return self._row(row) if row else None

    def all(self) -> list[Instance]:
        rows = self.db.execute(f"SELECT {','.join(_COLUMNS)} FROM instances ORDER BY created_time").fetchall()
        return [self._row(r) for r in rows]

    def active_ids(self) -> list[str]:
        rows = self.db.execute("SELECT instance_id FROM instances WHERE status IN ('Pending','Running')")
        return [r[0] for r in rows]

    def inbox(self, instance_id: str) -> list[tuple[int, str, dict]]:
        rows = self.db.execute("SELECT seq, execution_id, event FROM inbox WHERE instance_id=? ORDER BY seq",
                               (instance_id,)).fetchall()
        return [(seq, execution_id, json.loads(ev)) for seq, execution_id, ev in rows]

    def transaction(self):
        return _Transaction(self.db)

    # The writers below run inside ``with store.transaction():`` when several must be atomic.
    def put(self, inst: Instance) -> None:
        values = [getattr(inst, c) for c in _COLUMNS]
        values[_COLUMNS.index("history")] = json.dumps(inst.history)
        values[_COLUMNS.index("canceled_timers")] = json.dumps(inst.canceled_timers)
        self.db.execute(f"INSERT OR REPLACE INTO instances ({','.join(_COLUMNS)}) "
                        f"VALUES ({','.join('?' * len(_COLUMNS))})", values)

    def enqueue(self, instance_id: str, execution_id: str, event: dict) -> None:
        self.db.execute("INSERT INTO inbox (instance_id, execution_id, event) VALUES (?,?,?)",
                        (instance_id, execution_id, json.dumps(event)))

    def consume(self, seqs: list[int]) -> None:
        self.db.executemany("DELETE FROM inbox WHERE seq=?", [(s,) for s in seqs])

    def clear_inbox(self, instance_id: str) -> None:
        self.db.execute("DELETE FROM inbox WHERE instance_id=?", (instance_id,))

    # ---- activity work items ----
    def add_work_item(self, item: WorkItem) -> bool:
        """Insert unless a work item with the same key exists (True when inserted)."""
        values = [getattr(item, c) for c in _ITEM_COLUMNS]
        cursor = self.db.execute(f"INSERT OR IGNORE INTO activities ({','.join(_ITEM_COLUMNS)}) "
                                 f"VALUES ({','.join('?' * len(_ITEM_COLUMNS))})", values)
        return cursor.rowcount > 0

    def work_items(self, instance_id: str | None = None) -> list[WorkItem]:
        query = f"SELECT {','.join(_ITEM_COLUMNS)} FROM activities"
        args: tuple = ()
        if instance_id is not None:
            query += " WHERE instance_id=?"
            args = (instance_id,)
        rows = self.db.execute(query + " ORDER BY scheduled_time, instance_id, event_id", args).fetchall()
        return [WorkItem(**dict(zip(_ITEM_COLUMNS, r))) for r in rows]

    def mark_work_item_running(self, key: tuple[str, str, int], started_time: str) -> int:
        """State Running, dequeue count + 1; returns the new dequeue count (0 when the item is gone)."""
        self.db.execute("UPDATE activities SET state='Running', dequeue_count=dequeue_count+1, started_time=? "
                        "WHERE instance_id=? AND execution_id=? AND event_id=?", (started_time, *key))
        row = self.db.execute("SELECT dequeue_count FROM activities WHERE instance_id=? AND execution_id=? "
                              "AND event_id=?", key).fetchone()
        return row[0] if row else 0

    def delete_work_item(self, key: tuple[str, str, int]) -> None:
        self.db.execute("DELETE FROM activities WHERE instance_id=? AND execution_id=? AND event_id=?", key)

    def delete(self, instance_id: str) -> bool:
        self.clear_inbox(instance_id)
        return self.db.execute("DELETE FROM instances WHERE instance_id=?", (instance_id,)).rowcount > 0


class _Transaction:
    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self):
        self.db.execute("BEGIN IMMEDIATE")
        return self

    def __exit__(self, exc_type, exc, tb):
        self.db.execute("ROLLBACK" if exc_type else "COMMIT")
        return False
