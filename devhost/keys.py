"""Function keys: generated randomly on first start, kept in ``<state dir>/keys.json`` (git-ignored).

Levels as in the host: ``anonymous`` needs nothing; ``function`` accepts the host's default
function key, the function's own key or the master key; ``admin`` needs the master key.
The key comes from ``?code=`` or the ``x-functions-key`` header.
"""

from __future__ import annotations

import hmac
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path


def _new_key() -> str:
    return secrets.token_urlsafe(40)


@dataclass
class Keys:
    """The key set; ``repr`` never shows values."""

    path: Path
    data: dict

    def __repr__(self) -> str:
        return f"Keys(path={str(self.path)!r})"

    @property
    def master(self) -> str:
        return self.data["masterKey"]

    @property
    def default_function_key(self) -> str:
        return self.data["functionKeys"]["default"]

    def function_key(self, function_name: str) -> str:
        return self.data["functions"][function_name]["default"]

    def system_key(self, name: str) -> str:
        return self.data["systemKeys"][name]

    def authorize(self, level: str, function_name: str, presented: str | None) -> bool:
        level = (level or "function").lower()
        if level == "anonymous":
            return True
        if not presented:
            return False
        accepted = [self.master]
        if level == "function":
            accepted.append(self.default_function_key)
            own = self.data["functions"].get(function_name, {}).get("default")
            if own:
                accepted.append(own)
        return any(hmac.compare_digest(presented.encode(), key.encode()) for key in accepted)


def load_keys(state_dir: Path, function_names: list[str], system_keys: tuple[str, ...] = ()) -> Keys:
    """Read keys.json, adding keys for new functions; create the file (mode 0600) if missing."""
    path = state_dir / "keys.json"
    data = json.loads(path.read_text()) if path.exists() else {}
    changed = not data
    data.setdefault("masterKey", _new_key())
    data.setdefault("functionKeys", {}).setdefault("default", _new_key())
    functions = data.setdefault("functions", {})
    for name in function_names:
        if name not in functions:
            functions[name] = {"default": _new_key()}
            changed = True
    for name in system_keys:
        if name not in data.setdefault("systemKeys", {}):
            data["systemKeys"][name] = _new_key()
            changed = True
    if changed:
        state_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(data, handle, indent=2)
        os.replace(tmp, path)
    return Keys(path, data)
