"""Pure logic behind the app's hot-path savings: when the storage SDK reads the environment
(proxy variables), and how queue-send outcomes are logged without a record per message."""

from __future__ import annotations

import logging

import pytest

from bridge.queue_send import OutcomeLog
from bridge.storage import use_env_settings
from devhost.queues import proxy_configured


@pytest.mark.parametrize("environ, expected", [
    ({}, False),
    ({"PATH": "/usr/bin", "NO_PROXY": "localhost"}, False),  # no_proxy alone selects no proxy
    ({"HTTPS_PROXY": ""}, False),
    ({"HTTPS_PROXY": "http://proxy:3128"}, True),
    ({"http_proxy": "http://proxy:3128"}, True),
    ({"All_Proxy": "socks5://proxy"}, True),
])
def test_storage_reads_the_environment_only_when_a_proxy_is_set(environ, expected):
    assert use_env_settings(environ) is expected
    assert proxy_configured(environ) is expected


def test_outcomes_first_of_each_interval_in_full_the_rest_counted(caplog):
    now = [100.0]
    outcomes = OutcomeLog(interval=1.0, clock=lambda: now[0])
    caplog.set_level(logging.INFO, logger="bridge.queue_send")
    outcomes.record("m-1", "delivered 200")
    now[0] += 0.2
    outcomes.record("m-2", "delivered 200")
    outcomes.record("m-3", "poisoned listener_rejected")
    assert [r.getMessage() for r in caplog.records] == ["message m-1: delivered 200"]
    now[0] += 1.0
    outcomes.record("m-4", "delivered 202")
    assert [r.getMessage() for r in caplog.records][1:] == [
        "2 more message(s) in 1.2 s: 1 delivered 200, 1 poisoned listener_rejected",
        "message m-4: delivered 202",
    ]
