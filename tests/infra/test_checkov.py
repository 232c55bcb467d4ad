"""Checkov policy lint of infra/ (Bicep), offline.

Checkov lives in its own virtualenv, `.venv-checkov`, installed by `make setup` from requirements-checkov.txt:
checkov 3.3.30 pins pycep-parser 0.5.1, which conflicts with the project's pycep-parser 0.7.1. This test creates
nothing; it runs the installed checkov. Skipped checks are listed, each with its reason, in infra/.checkov.yaml.
"""

from __future__ import annotations

import os
import re
import subprocess

import pytest

from tests.infra import bicep as b

CHECKOV = b.REPO / ".venv-checkov" / "bin" / "checkov"
CONFIG = b.INFRA / ".checkov.yaml"


def test_requirements_checkov_is_fully_pinned():
    lines = [
        line.strip()
        for line in (b.REPO / "requirements-checkov.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert "checkov==3.3.30" in lines
    assert "pycep-parser==0.5.1" in lines
    unpinned = [line for line in lines if not re.fullmatch(r"[A-Za-z0-9_.\-\[\],]+==[A-Za-z0-9_.+\-!]+", line)]
    assert not unpinned, f"unpinned requirements: {unpinned}"


def _skip_entries() -> list[tuple[str, list[str]]]:
    """(check id, comment lines right above it or on its line) for each entry of skip-check."""
    entries, comments, in_skip = [], [], False
    for raw in CONFIG.read_text().splitlines():
        line = raw.strip()
        if not raw.startswith(" ") and line and not line.startswith("#"):
            in_skip = line == "skip-check:"
            comments = []
            continue
        if not in_skip:
            continue
        if line.startswith("#"):
            comments.append(line)
        elif line.startswith("- "):
            item, _, inline = line[2:].partition("#")
            entries.append((item.strip(), comments + ([inline.strip()] if inline.strip() else [])))
            comments = []
    return entries


def test_every_skipped_check_says_why():
    entries = _skip_entries()
    assert entries, "infra/.checkov.yaml has no skip-check list"
    assert len(entries) <= 10, "keep the skip list short: fix findings instead"
    for check, why in entries:
        assert re.fullmatch(r"CKV2?_AZURE_\d+", check), check
        assert why and len(" ".join(why)) > 40, f"{check}: no reason given"
    assert len({c for c, _ in entries}) == len(entries), "duplicate skip entries"


@pytest.mark.slow
def test_checkov_passes_on_infra():
    if not CHECKOV.exists():
        pytest.fail(f"{CHECKOV.relative_to(b.REPO)} is missing: run `make setup` (installs requirements-checkov.txt)")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BC_", "CKV_", "PRISMA_"))}
    env["LOG_LEVEL"] = "WARNING"
    result = subprocess.run(
        [
            str(CHECKOV),
            "-d", "infra",
            "--framework", "bicep",
            "--skip-download",
            "--compact",
            "--quiet",
            "--config-file", str(CONFIG.relative_to(b.REPO)),
        ],
        cwd=b.REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"checkov found problems (exit {result.returncode}):\n{output[-6000:]}"
    summary = re.search(r"Passed checks: (\d+), Failed checks: (\d+)", output)
    assert summary, f"no checkov summary in:\n{output[-2000:]}"
    passed, failed = map(int, summary.groups())
    assert failed == 0
    # Guard against a silent no-op (e.g. a parse failure that checkov only logs): the current templates pass 20.
    assert passed >= 15, f"checkov ran only {passed} checks:\n{output[-2000:]}"
