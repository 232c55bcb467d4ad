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


def _readme_sample() -> dict:
    import json
    import re

    text = (REPO_ROOT / "emulator" / "README.md").read_text()
    block = re.search(r"## Config file\s+```json\n(.*?)```", text, re.S)
    assert block, "emulator/README.md lost its config sample"
    return json.loads(block.group(1))


def test_readme_sample_verbatim_is_refused_at_the_first_placeholder():
    with pytest.raises(ConfigError) as info:
        load_config(_readme_sample())
    message = str(info.value)
    assert "'sasRules[0].key' is the placeholder '<random>'" in message
    assert "replace it with a real value" in message and "uuid" in message  # says what to put there


@pytest.mark.parametrize(
    "mutate, expected",
    [
        (lambda c: c["identities"][0].update(clientId="<guid>"), "'identities[0].clientId' is the placeholder '<guid>'"),
        (lambda c: c["roleAssignments"][0].update(principalId="<bridge principalId>"),
         "'roleAssignments[0].principalId' is the placeholder '<bridge principalId>'"),
        (lambda c: c["identities"][1].update(principalId=c["identities"][0]["principalId"]),
         "'identities[1].principalId'"),
        (lambda c: c["identities"][2].update(clientId=c["identities"][0]["clientId"].upper()), "'identities[2].clientId'"),
        (lambda c: c["identities"][0].update(principalId="bridge"), "'identities[0].principalId' 'bridge' is not a GUID"),
        (lambda c: c.update(tenantId="contoso.onmicrosoft.com"), "'tenantId'"),
    ],
)
def test_placeholders_duplicates_and_non_guids_are_refused_with_the_key(mutate, expected):
    cfg = copy.deepcopy(TEST_CONFIG)
    mutate(cfg)
    with pytest.raises(ConfigError) as info:
        load_config(cfg)
    assert expected in str(info.value)


def test_role_assignment_for_a_principal_that_matches_nobody_is_refused():
    import uuid

    cfg = copy.deepcopy(TEST_CONFIG)
    stray = str(uuid.uuid4())
    cfg["roleAssignments"][1]["principalId"] = stray
    with pytest.raises(ConfigError) as info:
        load_config(cfg)
    message = str(info.value)
    assert f"'roleAssignments[1].principalId' '{stray}' matches no identity" in message
    assert "use the principalId of one of 'identities'" in message and "sender: " in message


def test_readme_sample_with_values_filled_in_loads():
    """Replacing every placeholder as the message says gives a config that works."""
    import uuid

    cfg = _readme_sample()
    for rule in cfg["sasRules"]:
        rule["key"] = "k" * 44
    for ident in cfg["identities"]:
        ident["clientId"], ident["principalId"] = str(uuid.uuid4()), str(uuid.uuid4())
    cfg["roleAssignments"][0]["principalId"] = cfg["identities"][0]["principalId"]
    assert load_config(cfg).identities[0].name == "bridge"


def test_busy_port_is_one_clean_line(tmp_path):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = subprocess.run([sys.executable, "-m", "emulator", "--port", str(port), "--no-tls",
                               "--state-dir", str(tmp_path / "s")], cwd=REPO_ROOT, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [
        f"emulator: --port {port}: 127.0.0.1:{port} is already in use; stop the process using it, "
        "or pass another --port (0 picks a free port)"
    ]
    assert "Traceback" not in proc.stderr


async def test_printed_connection_strings_work_as_printed():
    """The default config's strings carry EntityPath, UseDevelopmentEmulator and an absolute TrustedCaFile."""
    from relay import HybridConnectionClient, HybridConnectionListener, RelayedHttpResponse, parse_connection_string

    async def handle(request):
        return RelayedHttpResponse(200, body=b"as printed")

    for tls in (True, False):
        async with start_emulator(None, tls=tls) as emu:
            printed = emu.info["connection_strings"]["RootManageSharedAccessKey"]
            cs = parse_connection_string(printed)
            assert cs.entity_path == "orders" and cs.use_development_emulator
            assert (cs.trusted_ca_file == emu.ca_cert and Path(cs.trusted_ca_file).is_absolute()) if tls else cs.trusted_ca_file is None
            async with HybridConnectionListener.from_connection_string(printed, request_handler=handle):
                async with HybridConnectionClient.from_connection_string(printed) as client:
                    async with await client.request("GET", "/x") as resp:
                        assert (resp.status, await resp.read()) == (200, b"as printed")
