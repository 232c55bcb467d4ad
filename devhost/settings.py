"""App settings: local.settings.json ``Values`` into ``os.environ``, like Core Tools does.

Variables already in the environment win over the file (the host's precedence), so tests
and ``make run`` can inject connection strings without editing the file.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path

log = logging.getLogger("devhost.settings")

LOCAL_SETTINGS = "local.settings.json"
SAMPLE_NAMES = ("local.settings.sample.json", "local.settings.example.json")


class SettingsError(RuntimeError):
    """local.settings.json is missing, malformed or a referenced setting is undefined."""


def ensure_local_settings(app_dir: Path) -> Path | None:
    """Return the app's local.settings.json, creating it from the sample when missing."""
    path = app_dir / LOCAL_SETTINGS
    if path.exists():
        return path
    for name in SAMPLE_NAMES:
        sample = app_dir / name
        if sample.exists():
            shutil.copyfile(sample, path)
            log.info("created %s from %s", path, name)
            return path
    return None


def load_local_settings(app_dir: Path) -> dict:
    """Parse local.settings.json (``{}`` when there is none)."""
    path = ensure_local_settings(app_dir)
    if path is None:
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise SettingsError(f"{path} is not valid JSON: {exc}") from None
    if data.get("IsEncrypted"):
        raise SettingsError(f"{path} is encrypted; devhost reads plain Values only (IsEncrypted: false)")
    return data


def apply_values(values: dict, environ: os._Environ | dict = os.environ) -> list[str]:
    """Copy ``Values`` into the environment unless already set; return the names applied."""
    applied = []
    for name, value in (values or {}).items():
        if name not in environ:
            environ[name] = "" if value is None else str(value)
            applied.append(name)
    return applied


_EXPRESSION = re.compile(r"%([^%]+)%")


def resolve(value, environ=os.environ):
    """Resolve ``%SETTING%`` binding expressions in a binding property (strings only)."""
    if not isinstance(value, str) or "%" not in value:
        return value

    def sub(match):
        name = match.group(1)
        if name not in environ:
            raise SettingsError(f"binding expression %{name}% refers to an undefined app setting {name!r}")
        return environ[name]

    return _EXPRESSION.sub(sub, value)
