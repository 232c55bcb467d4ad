"""The deployment package honours .funcignore (docs/deploy.md, Option B)."""

from __future__ import annotations

import zipfile

from infra.package_app import build
from tests.infra import bicep as b


def test_package_holds_the_app_and_nothing_funcignore_excludes(tmp_path):
    out = tmp_path / "bridge.zip"
    build(b.REPO, out)
    names = zipfile.ZipFile(out).namelist()
    for needed in ("function_app.py", "host.json", "requirements.txt", "bridge/generation.py", "relay/listener.py"):
        assert needed in names
    for excluded in ("tests/", "emulator/", "devhost/", "docs/", "infra/", "bench/", "node_modules/", ".venv/", ".git"):
        assert not any(n.startswith(excluded) for n in names), excluded
    assert "local.settings.json" not in names and not any("__pycache__" in n for n in names)
