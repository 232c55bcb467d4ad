"""Offline reading of infra/*.bicep with pycep-parser, for structural tests.

pycep turns a Bicep file into a dict (`globals`, `parameters`, `variables`, `resources`, `modules`, `outputs`).
Expressions stay trees of ``{"function": {...}}`` / ``{"operator": {...}}`` dicts; identifiers and string literals
are both plain strings, so a string is treated as a variable reference only when such a variable exists.
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path
from typing import Any, Iterator

from pycep import BicepParser

REPO = Path(__file__).resolve().parents[2]
INFRA = REPO / "infra"
MAIN = INFRA / "main.bicep"


def bicep_files() -> list[Path]:
    """Every Bicep file under infra/, main.bicep first."""
    return sorted(INFRA.rglob("*.bicep"), key=lambda p: (p != MAIN, str(p)))


@functools.lru_cache(maxsize=None)
def _parser() -> BicepParser:
    return BicepParser()


@functools.lru_cache(maxsize=None)
def parse(path: Path) -> dict[str, Any]:
    """The pycep JSON of one file (cached: parsing takes a fraction of a second per file)."""
    return _parser().parse(file_path=path)


def parse_all() -> dict[Path, dict[str, Any]]:
    return {path: parse(path) for path in bicep_files()}


def body(node: dict[str, Any]) -> dict[str, Any]:
    """The properties of a resource or module declaration, through `[for ...]` loops and `if (...)` conditions."""
    config = node["config"]
    while isinstance(config, dict) and ("loop_type" in config or "condition" in config) and "config" in config:
        config = config["config"]
    return config


def loop(node: dict[str, Any]) -> dict[str, Any] | None:
    """`{"item_name", "array_name", ...}` of a `[for ...]` declaration, else None."""
    config = node["config"]
    if isinstance(config, dict) and config.get("loop_type"):
        return config["loop_type"]["detail"]
    return None


def condition(node: dict[str, Any]) -> Any:
    config = node["config"]
    if isinstance(config, dict) and "condition" in config and "config" in config:
        return config["condition"]
    return None


def resources(doc: dict[str, Any], type_: str | None = None) -> Iterator[tuple[str, dict[str, Any]]]:
    for name, node in doc.get("resources", {}).items():
        if type_ is None or node["type"].lower() == type_.lower():
            yield name, node


def variable_value(doc: dict[str, Any], name: str) -> Any:
    return doc["variables"][name]["value"]


def resolve(doc: dict[str, Any], value: Any) -> Any:
    """Follow variable references (a plain string naming a variable) to the variable's value."""
    seen = set()
    while isinstance(value, str) and value in doc.get("variables", {}) and value not in seen:
        seen.add(value)
        value = variable_value(doc, value)
    return value


def property_path(expr: Any) -> list[str] | None:
    """`a.b.c` as ["a", "b", "c"]; `a[i].b` as ["a", "[i]", "b"]; None for anything else."""
    if isinstance(expr, str):
        return [expr]
    if not isinstance(expr, dict) or "operator" not in expr:
        return None
    op = expr["operator"]
    operands = op.get("operands", {})
    if op["type"] == "property_accessor":
        left, right = property_path(operands["operand_1"]), property_path(operands["operand_2"])
        return None if left is None or right is None else left + right
    if op["type"] == "index_accessor":
        left = property_path(operands["operand_1"])
        return None if left is None else left + [f"[{operands['operand_2']}]"]
    return None


def function_call(expr: Any, name: str) -> dict[str, Any] | None:
    """Parameters of `name(...)` when `expr` is that call (pycep spells names in snake_case)."""
    if isinstance(expr, dict) and "function" in expr and expr["function"]["type"] == name:
        return expr["function"].get("parameters") or {}
    return None


def conditional(expr: Any) -> dict[str, Any] | None:
    """`{"condition", "true_value", "false_value"}` of `cond ? a : b`, else None."""
    if isinstance(expr, dict) and "operator" in expr and expr["operator"]["type"] == "conditional":
        return expr["operator"]["operands"]
    return None


def walk(expr: Any) -> Iterator[Any]:
    """Every node of an expression tree."""
    yield expr
    if isinstance(expr, dict):
        for value in expr.values():
            yield from walk(value)
    elif isinstance(expr, list):
        for value in expr:
            yield from walk(value)


def app_settings(doc: dict[str, Any] | None = None) -> dict[str, list[Any]]:
    """Every app setting the site can get, name -> value expressions (all branches of every condition).

    Collected from the `siteConfig.appSettings` expression of the Microsoft.Web/sites resource, following variables,
    `concat()` and `cond ? a : b` into `{ name: ..., value: ... }` objects.
    """
    doc = doc or parse(MAIN)
    sites = [node for _, node in resources(doc, "Microsoft.Web/sites") if not node.get("existing")]
    assert len(sites) == 1, "expected exactly one function app in main.bicep"
    root = body(sites[0])["properties"]["siteConfig"]["appSettings"]
    found: dict[str, list[Any]] = {}

    def visit(expr: Any, depth: int = 0) -> None:
        assert depth < 50, "app settings expression too deep (cycle?)"
        expr = resolve(doc, expr)
        if isinstance(expr, list):
            for item in expr:
                visit(item, depth + 1)
        elif isinstance(expr, dict) and set(expr) == {"name", "value"}:
            found.setdefault(expr["name"], []).append(expr["value"])
        elif (args := function_call(expr, "concat")) is not None:
            for arg in args.values():
                visit(arg, depth + 1)
        elif (branches := conditional(expr)) is not None:
            visit(branches["true_value"], depth + 1)
            visit(branches["false_value"], depth + 1)
        else:
            raise AssertionError(f"unexpected app settings expression: {json.dumps(expr)[:200]}")

    visit(root)
    return found


def settings_variable_of(doc: dict[str, Any], setting: str) -> str:
    """Name of the main.bicep variable whose value declares the app setting `setting`."""
    owners = [
        name
        for name, var in doc["variables"].items()
        if any(isinstance(n, dict) and n.get("name") == setting and "value" in n for n in walk(var["value"]))
    ]
    assert len(owners) == 1, f"{setting} declared in {owners}"
    return owners[0]


GUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def role_ids(doc: dict[str, Any], node: dict[str, Any]) -> list[str]:
    """Role definition GUIDs a roleAssignments declaration assigns (through loop items and variables)."""
    config = body(node)
    params = function_call(config["properties"]["roleDefinitionId"], "subscription_resource_id")
    assert params is not None, "roleDefinitionId must be subscriptionResourceId('Microsoft.Authorization/roleDefinitions', id)"
    assert params["resource_type"] == "Microsoft.Authorization/roleDefinitions"
    ref = params["resource_name_1"]
    detail = loop(node)
    if detail and ref == detail.get("item_name"):
        values = resolve(doc, detail["array_name"])
        assert isinstance(values, list), f"role loop over {detail['array_name']} must be a literal list"
        ids = [resolve(doc, v) for v in values]
    else:
        ids = [resolve(doc, ref)]
    for role_id in ids:
        assert isinstance(role_id, str) and GUID.match(role_id), f"role id {role_id!r} is not a literal GUID"
    return ids
