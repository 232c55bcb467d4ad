"""Import function_app.py the way the Python worker does and index its functions by trigger.

The worker imports the script (``PYTHON_SCRIPT_FILE_NAME``, default function_app.py), requires
exactly one module-level ``FunctionRegister`` (FunctionApp/DFApp) and calls ``get_functions()``
once (a second call on the same app raises; functions-notes §1.2).
"""

from __future__ import annotations

import functools
import importlib.util
import inspect
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import azure.functions as func

from .settings import SettingsError, resolve

# Binding properties that may hold %SETTING% expressions.
_RESOLVABLE = ("queueName", "route", "schedule", "connection", "path", "taskHub")


class LoadError(RuntimeError):
    """function_app.py could not be imported or indexed (what the worker would report)."""


@dataclass
class FunctionInfo:
    """One indexed function: its bindings (host JSON shape) and the callable the worker invokes."""

    name: str
    trigger: dict
    bindings: list[dict]
    callable: object
    parameters: list[str] = field(default_factory=list)

    @property
    def trigger_type(self) -> str:
        return self.trigger["type"]

    @functools.cached_property
    def is_async(self) -> bool:  # asked on every invocation; the callable never changes
        return inspect.iscoroutinefunction(self.callable)

    def bindings_of(self, type_: str, direction: str | None = None) -> list[dict]:
        return [b for b in self.bindings
                if b["type"] == type_ and (direction is None or b.get("direction") == direction)]

    @functools.cached_property
    def output_bindings(self) -> list[dict]:  # asked twice per invocation; bindings are fixed at indexing
        return [b for b in self.bindings if b.get("direction") == "OUT"]


@dataclass
class FunctionIndex:
    """All functions of the app, by name and by trigger type."""

    app: object
    functions: dict[str, FunctionInfo]

    def by_trigger(self, type_: str) -> list[FunctionInfo]:
        return [f for f in self.functions.values() if f.trigger_type == type_]

    def get(self, name: str, trigger_type: str | None = None) -> FunctionInfo | None:
        info = self.functions.get(name)
        if info is None:  # the host matches function names case-insensitively
            info = next((f for n, f in self.functions.items() if n.lower() == name.lower()), None)
        if info is not None and trigger_type and info.trigger_type != trigger_type:
            return None
        return info


def import_app(app_dir: Path):
    """Import the script and return its single FunctionRegister."""
    script = os.environ.get("PYTHON_SCRIPT_FILE_NAME") or "function_app.py"
    path = app_dir / script
    if not path.exists():
        raise LoadError(f"{path} not found (set --app-dir to the folder holding {script})")
    if str(app_dir) not in sys.path:
        sys.path.insert(0, str(app_dir))
    module_name = path.stem
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        raise LoadError(f"importing {path} failed: {type(exc).__name__}: {exc}") from exc
    apps = [v for v in vars(module).values() if isinstance(v, func.FunctionRegister)]
    if not apps:
        raise LoadError(f"{path} defines no FunctionApp/DFApp at module level")
    if len(apps) > 1:
        raise LoadError(f"{path}: More than one FunctionApp/DFApp instance at module level "
                        f"({len(apps)}); the worker refuses this (use Blueprints)")
    return apps[0]


def index_functions(app) -> FunctionIndex:
    """``get_functions()`` once, into host-shaped binding dicts with %SETTING% resolved."""
    functions: dict[str, FunctionInfo] = {}
    for fn in app.get_functions():
        name = fn.get_function_name()
        bindings = json.loads(fn.get_function_json())["bindings"]
        for binding in bindings:
            for key in _RESOLVABLE:
                if key in binding:
                    try:
                        binding[key] = resolve(binding[key])
                    except SettingsError as exc:
                        raise LoadError(f"function {name}: {exc}") from None
        trigger = next((b for b in bindings if b["type"].lower().endswith("trigger")), None)
        if trigger is None:
            raise LoadError(f"function {name} has no trigger binding")
        user = fn.get_user_function()
        try:
            parameters = list(inspect.signature(user).parameters)
        except (TypeError, ValueError):
            parameters = []
        functions[name] = FunctionInfo(name, trigger, bindings, user, parameters)
    return FunctionIndex(app, functions)


def load(app_dir: Path) -> FunctionIndex:
    return index_functions(import_app(app_dir))
