"""Config validation names the bad key; the CLI prints it and exits 2; the default config works."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest

from emulator.config import ConfigError, load_config, role_guid
from emulator.launcher import REPO_ROOT
from tests.fixtures.emulator import TEST_CONFIG, start_emulator


def test_test_config_is_valid():
    cfg = load_config(copy.deepcopy(TEST_CONFIG))
    assert set(cfg.hybrid_connections) == {"orders", "inbound", "echo", "public", "orders/eu"}
    assert cfg.listener_limit == 25 and cfg.inline_threshold_bytes == 65536 and cfg.no_listener_http_status == 502


@pytest.mark.parametrize(
    "mutate, key",
    [
        (lambda c: c.pop("namespace"), "namespace"),
        (lambda c: c["hybridConnections"].append({"name": "-bad-"}), "hybridConnections[5].name"),
        (lambda c: c["hybridConnections"][0].update(requiresClientAuthorization="yes"), "hybridConnections[0].requiresClientAuthorization"),
        (lambda c: c["sasRules"][0].update(rights=["Read"]), "sasRules[0].rights"),
        (lambda c: c["sasRules"][1].update(entity="missing"), "sasRules[1].entity"),
        (lambda c: c["roleAssignments"][0].update(role="Contributor"), "roleAssignments[0].role"),
        (lambda c: c.update(tokenLifetimeSeconds=0), "tokenLifetimeSeconds"),
        (lambda c: c.update(acceptTimeout=3), "acceptTimeout"),
        (lambda c: c["identities"][1].update(systemAssigned=True), "identities"),
    ],
)
def test_bad_config_names_the_key(mutate, key):
    cfg = copy.deepcopy(TEST_CONFIG)
    mutate(cfg)
    with pytest.raises(ConfigError) as info:
        load_config(cfg)
    assert f"'{key}" in str(info.value)


def test_roles_by_name_and_guid():
    owner = "2787bf04-f1f5-4bfe-8383-c8a24483ee38"
    assert role_guid("Azure Relay Owner") == owner
    assert role_guid(f"/providers/Microsoft.Authorization/roleDefinitions/{owner.upper()}") == owner
    assert role_guid("Reader") is None


def test_cli_reports_bad_config(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"namespace": "contoso", "hybridConnections": [{"name": 5}]}')
    proc = subprocess.run([sys.executable, "-m", "emulator", "--config", str(bad), "--state-dir", str(tmp_path / "s")],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and "hybridConnections[0].name" in proc.stderr and proc.stdout == ""


async def test_default_config_and_restart_keep_keys():
    async with start_emulator(None, tls=True) as emu:
        assert emu.relay.startswith("wss://") and emu.ca_cert and emu.info["connection_strings"]
        key = emu.sas_key("RootManageSharedAccessKey")
        assert {h["name"] for h in emu.config["hybridConnections"]} >= {"orders", "inbound", "public"}
        port, ca = emu.port, Path(emu.ca_cert).read_text()
        await emu.restart()
        assert emu.port == port and emu.sas_key("RootManageSharedAccessKey") == key and Path(emu.ca_cert).read_text() == ca
