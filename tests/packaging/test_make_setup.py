"""`make run` installs only what it runs; `make test` installs everything; each step says what and how long.

Dry runs (`make -n`) in a scratch folder holding copies of the Makefile and the files its stamps
depend on, so nothing is installed and the shared venvs are not touched.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _dry_run(tmp_path: Path, target: str) -> str:
    for name in ("Makefile", "requirements.txt", "requirements-dev.txt", "requirements-checkov.txt", "package.json",
                 "package-lock.json"):
        shutil.copy(REPO / name, tmp_path / name)
    proc = subprocess.run(["make", "-n", target], cwd=tmp_path, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_make_run_does_not_wait_for_the_checkov_venv(tmp_path):
    run = _dry_run(tmp_path, "run")
    assert "-r requirements-dev.txt" in run and "npm ci" in run and "-m devhost.run" in run
    assert "checkov" not in run


def test_make_test_still_installs_everything(tmp_path):
    test = _dry_run(tmp_path, "test")
    assert "-r requirements-dev.txt" in test and "npm ci" in test and "-r requirements-checkov.txt" in test
    assert test.index("-r requirements-checkov.txt") < test.index("-m pytest")


def test_setup_steps_show_what_and_how_long(tmp_path):
    setup = _dry_run(tmp_path, "setup")
    for what in ("Python venv .venv", "npm ci", "checkov venv .venv-checkov"):
        assert f'echo "setup: {what}' in setup
    assert setup.count("done in $(( $(date +%s) - start )) s") == 3
    for line in setup.splitlines():  # the requirement installs print pip's progress, not --quiet silence
        if " -r requirements" in line:
            assert "-r requirements" in line and "--quiet -r" not in line and "--quiet --disable" not in line
    assert "--loglevel=error" not in setup


def test_readme_top_has_exactly_two_commands():
    top = (REPO / "README.md").read_text().split("```", 2)[1]
    commands = [line.split("#", 1)[0].strip() for line in top.splitlines() if line.split("#", 1)[0].strip()]
    assert commands == ["make run", "make test"]
