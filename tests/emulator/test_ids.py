"""Tracking ids: GUID-shaped as Azure's, unique within the process (pure logic)."""

from __future__ import annotations

import uuid

from emulator.ids import tracking_id


def test_tracking_ids_are_unique_v4_shaped_guids():
    ids = [tracking_id() for _ in range(10_000)]
    assert len(set(ids)) == len(ids)
    for value in ids[:3] + ids[-3:]:
        parsed = uuid.UUID(value)
        assert str(parsed) == value and parsed.version == 4 and parsed.variant == uuid.RFC_4122
