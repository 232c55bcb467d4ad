"""Every Bicep file parses offline (pycep-parser), modules are wired consistently, and the azd files match main.bicep.

No Bicep CLI exists for this machine type (shared functions-notes §6.2), so this is the offline stand-in for
`bicep build`: syntax, module paths, module parameters and the azd parameter file. Type checking of resource
properties still happens only at deployment (`az deployment group validate` / `what-if`, docs/deploy.md).
"""

from __future__ import annotations

import json
import re

import pytest

from tests.infra import bicep as b


def test_infra_has_main_and_modules():
    names = {p.relative_to(b.INFRA).as_posix() for p in b.bicep_files()}
    assert "main.bicep" in names
    assert any(name.startswith("modules/") for name in names)


@pytest.mark.parametrize("path", b.bicep_files(), ids=lambda p: p.relative_to(b.INFRA).as_posix())
def test_bicep_file_parses(path):
    doc = b.parse(path)
    assert doc["globals"]["scope"]["value"] == "resourceGroup"
    assert doc.get("resources") or doc.get("modules"), f"{path.name} declares nothing"


def _module_calls():
    main = b.parse(b.MAIN)
    for name, module in main["modules"].items():
        assert module["type"] == "local", f"module {name} must be a local file (no registry access offline)"
        yield name, module, (b.INFRA / module["detail"]["path"]).resolve()


def test_every_module_path_exists_and_every_module_is_used():
    used = set()
    for name, _module, path in _module_calls():
        assert path.is_file(), f"module {name}: {path} missing"
        used.add(path)
    unused = {p.resolve() for p in b.bicep_files() if p != b.MAIN} - used
    assert not unused, f"modules nobody calls: {sorted(map(str, unused))}"


def test_module_calls_pass_exactly_the_declared_parameters():
    for name, module, path in _module_calls():
        declared = b.parse(path)["parameters"]
        passed = set(b.body(module)["params"])
        assert passed <= set(declared), f"module {name} passes unknown params {passed - set(declared)}"
        required = {p for p, spec in declared.items() if spec["default"] is None}
        assert required <= passed, f"module {name} misses required params {required - passed}"


def _main_parameters_file():
    return json.loads((b.INFRA / "main.parameters.json").read_text())


def test_parameters_file_is_azd_style_and_matches_main():
    doc = _main_parameters_file()
    assert doc["contentVersion"] == "1.0.0.0"
    params = doc["parameters"]
    assert params["environmentName"]["value"] == "${AZURE_ENV_NAME}"
    assert params["location"]["value"] == "${AZURE_LOCATION}"
    declared = b.parse(b.MAIN)["parameters"]
    assert set(params) <= set(declared), f"unknown parameters {set(params) - set(declared)}"
    required = {p for p, spec in declared.items() if spec["default"] is None}
    assert required <= set(params), f"parameters azd must supply: {required - set(params)}"
    allowed = {
        p: next((d["argument"] for d in spec["decorators"] if d["type"] == "allowed"), None)
        for p, spec in declared.items()
    }
    for name, entry in params.items():
        value = entry["value"]
        expected = declared[name]["type"]
        if isinstance(value, str) and (m := re.fullmatch(r"\$\{(\w+)(?:=(.*))?\}", value)):
            default = m.group(2)
            if default is not None and allowed[name]:
                assert default in allowed[name], f"{name}: default {default!r} not in {allowed[name]}"
            continue  # substituted by azd from the environment
        python_type = {"array": list, "string": str, "int": int, "bool": bool, "object": dict}[expected]
        assert isinstance(value, python_type), f"{name}: {value!r} is not a Bicep {expected}"


def test_azure_yaml_declares_the_bridge_function_service():
    text = (b.REPO / "azure.yaml").read_text()
    # No YAML library in the project venv: the file is small and flat enough to read by lines.
    lines = [line.split("#", 1)[0].rstrip() for line in text.splitlines()]
    lines = [line for line in lines if line.strip()]
    assert "services:" in lines
    service = lines.index("  bridge:")
    block = {}
    for line in lines[service + 1 :]:
        if not line.startswith("    "):
            break
        key, _, value = line.strip().partition(":")
        block[key] = value.strip()
    assert block == {"project": ".", "language": "python", "host": "function"}
    assert "  path: infra" in lines and "  module: main" in lines


def test_function_app_carries_the_azd_service_tag():
    main = b.parse(b.MAIN)
    (site,) = [n for _, n in b.resources(main, "Microsoft.Web/sites") if not n["existing"]]
    tags = b.function_call(b.body(site)["tags"], "union")
    assert tags is not None and {"'azd-service-name'": "bridge"} in tags.values()


@pytest.mark.parametrize("path", b.bicep_files(), ids=lambda p: p.relative_to(b.INFRA).as_posix())
def test_no_unused_parameters_variables_or_symbols(path):
    """The Bicep linter's no-unused-params / no-unused-vars / no-unused-existing-resources, approximated offline."""
    doc = b.parse(path)
    code = "\n".join(line.split("//", 1)[0] for line in path.read_text().splitlines())
    declared = [*doc.get("parameters", {}), *doc.get("variables", {})]
    declared += [name for name, node in doc.get("resources", {}).items() if node.get("existing")]
    for name in declared:
        uses = len(re.findall(rf"(?<![\w.'$]){re.escape(name)}\b", code))
        assert uses >= 2, f"{path.name}: {name} is declared but never used"
