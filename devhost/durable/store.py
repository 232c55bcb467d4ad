"""Orchestration instances and their pending events in SQLite (stdlib sqlite3).

One row per instance holds the current execution's history; ``inbox`` holds events that
arrived (activity results, fired timers, raised events, ExecutionStarted) but were not yet
replayed. An episode consumes inbox rows and writes the new history in one transaction, so a
crash at any point either replays the events again or has them already in history.
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
"""

TERMINAL = {"Completed", "Failed", "Terminated", "Canceled"}


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
