"""devhost's realistic Durable profile end to end (sample app): worker crash, recycle, platform-update kill, lag.

One devhost subprocess with ``DEVHOST_DURABLE_PROFILE=realistic``: every dispatch waits the worst-case polling
lag (host.json's interval overridden to 0.2 s), an activity that runs 2 s is killed as by a platform update, and
two fault rules hit chosen invocations.
"""

from __future__ import annotations

import json

import pytest
import pytest_asyncio

from .helpers import app_copy, start_devhost, storage_env
from .test_devhost import done, poll_status, runs_of, start_orchestration, wait_for

pytestmark = pytest.mark.slow

FAULTS = [
    {"kind": "crash", "activity": "slow_echo", "inputContains": '"value": 0', "after": 0.05},
    {"kind": "recycle", "activity": "tracked_run", "instance": "recycle-1", "after": 0.3, "downtime": 0.3},
]


@pytest_asyncio.fixture(scope="module")
async def realistic_host(azurite, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("realistic-devhost")
    env = storage_env(azurite,
                      DEVHOST_DURABLE_PROFILE="realistic", DEVHOST_DURABLE_POLL_LAG="worst",
                      AzureFunctionsJobHost__extensions__durableTask__storageProvider__maxQueuePollingInterval="00:00:00.2",
                      DEVHOST_DURABLE_PLATFORM_KILL_SECONDS="2", DEVHOST_DURABLE_FAULTS=json.dumps(FAULTS))
    host = await start_devhost(app_copy(tmp), tmp / "state", env, tmp / "devhost.log")
    try:
        yield host
    finally:
        await host.stop()


async def test_profile_is_announced(realistic_host):
    assert "realistic timing: max dispatch lag 0.2 s (worst case), platform kill after 2 s, 2 fault rule(s)" in realistic_host.log()


async def test_a_crashed_worker_fails_the_activity(realistic_host, http):
    payload = await start_orchestration(http, realistic_host, "eternal", "crash-1", {"generations": 1})
    final = await poll_status(http, payload["statusQueryGetUri"], done)
    # task_all fails with the crashed activity's TaskFailed, as the Functions host reports a dead worker
    assert final["runtimeStatus"] == "Failed" and "the worker process exited unexpectedly" in final["output"]
    assert "durable fault: crash of activity slow_echo (instance crash-1" in realistic_host.log()


async def test_a_recycled_activity_is_delivered_again(realistic_host, http, tmp_path):
    payload = await start_orchestration(http, realistic_host, "overlapping", "recycle-1",
                                        {"generations": 1, "seconds": 1, "dir": str(tmp_path), "pause": 0})
    final = await poll_status(http, payload["statusQueryGetUri"], done)
    assert final["runtimeStatus"] == "Completed"
    # killed 0.3 s in (no "end"), delivered again 0.3 s later, then it ran to its end
    await wait_for(lambda: runs_of(tmp_path) == ["start g0", "start g0", "end g0"], 10, "the redelivery", realistic_host.log)
    assert "durable fault: recycle of activity tracked_run (instance recycle-1" in realistic_host.log()
    assert "delivered again (attempt 2)" in realistic_host.log()


async def test_an_activity_longer_than_the_platform_grace_is_killed_and_delivered_again(realistic_host, http, tmp_path):
    payload = await start_orchestration(http, realistic_host, "overlapping", "platform-1",
                                        {"generations": 1, "seconds": 5, "dir": str(tmp_path), "pause": 0})
    await poll_status(http, payload["statusQueryGetUri"], done)
    await wait_for(lambda: runs_of(tmp_path)[:2] == ["start g0", "start g0"], 15, "a redelivery", realistic_host.log)
    assert "end g0" not in runs_of(tmp_path)  # never allowed to finish: why windows are capped below the grace
    assert "durable fault: platform-update of activity tracked_run (instance platform-1" in realistic_host.log()
