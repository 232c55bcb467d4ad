"""The realistic Durable timing model: its configuration and host.json's maxQueuePollingInterval."""

from __future__ import annotations

import json

import pytest

from devhost.durable.realism import DEFAULT_MAX_POLLING, RealismError, load_realism
from devhost.hostconfig import load_host_config


def test_fast_profile_is_the_default_and_dispatches_at_once():
    model = load_realism(None, {})
    assert not model.enabled and model.dispatch_lag() == 0 and model.platform_kill_after is None


def test_realistic_lag_is_bounded_by_the_polling_interval_30_s_when_unset():
    model = load_realism(None, {"DEVHOST_DURABLE_PROFILE": "realistic", "DEVHOST_DURABLE_SEED": "1"})
    lags = [model.dispatch_lag() for _ in range(500)]
    assert model.max_poll_lag == DEFAULT_MAX_POLLING and all(0 <= x <= DEFAULT_MAX_POLLING for x in lags)
    assert max(lags) > DEFAULT_MAX_POLLING / 2  # random over the whole range, not a constant
    assert model.platform_kill_after == 600


def test_worst_case_and_time_scale():
    model = load_realism(10.0, {"DEVHOST_DURABLE_PROFILE": "realistic", "DEVHOST_DURABLE_POLL_LAG": "worst",
                                "DEVHOST_DURABLE_TIME_SCALE": "0.05"})
    assert model.dispatch_lag() == pytest.approx(0.5) and model.platform_kill_after == pytest.approx(30)


def test_fault_rules_match_once_and_bad_values_are_named():
    faults = [{"kind": "crash", "activity": "listener_window", "inputContains": '"windowId": "g1-a"', "after": 1}]
    model = load_realism(None, {"DEVHOST_DURABLE_FAULTS": json.dumps(faults)})
    assert model.enabled and model.dispatch_lag() == 0
    assert model.fault_for("listener_window", "i", '{"windowId": "g0-a"}') is None
    assert model.fault_for("listener_window", "i", '{"windowId": "g1-a"}').kind == "crash"
    assert model.fault_for("listener_window", "i", '{"windowId": "g1-a"}') is None  # used up
    with pytest.raises(RealismError, match="DEVHOST_DURABLE_FAULTS"):
        load_realism(None, {"DEVHOST_DURABLE_FAULTS": '[{"kind": "explode"}]'})
    with pytest.raises(RealismError, match="DEVHOST_DURABLE_PROFILE"):
        load_realism(None, {"DEVHOST_DURABLE_PROFILE": "azure"})
    with pytest.raises(RealismError, match="DEVHOST_DURABLE_TIME_SCALE"):
        load_realism(None, {"DEVHOST_DURABLE_TIME_SCALE": "fast"})


def test_host_json_polling_interval_and_its_override(tmp_path):
    (tmp_path / "host.json").write_text(json.dumps(
        {"extensions": {"durableTask": {"storageProvider": {"maxQueuePollingInterval": "00:00:10"}}}}))
    assert load_host_config(tmp_path, {}).max_queue_polling_interval == 10
    override = {"AzureFunctionsJobHost__extensions__durableTask__storageProvider__maxQueuePollingInterval": "00:00:00.6"}
    assert load_host_config(tmp_path, override).max_queue_polling_interval == pytest.approx(0.6)
    (tmp_path / "host.json").write_text("{}")
    assert load_host_config(tmp_path, {}).max_queue_polling_interval is None
