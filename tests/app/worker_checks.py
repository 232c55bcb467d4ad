"""What the Python worker checks when it loads an indexed function (functions-notes §1.4).

Mirrors ``azure_functions_runtime/functions.py::FunctionRegistry.add_indexed_function`` (the
worker itself needs Python 3.13): parameter names == binding names, ``func.Out`` exactly on
out-direction bindings, annotations accepted by the binding's converter in
``azure.functions.meta``'s registry (with the worker's GenericBinding fallback for str/bytes),
and the return annotation against ``$return``. Returns a list of problems (empty = loads).
"""

from __future__ import annotations

import inspect
import typing

import azure.functions as func
from azure.functions import meta
from azure.functions.decorators.core import BindingDirection


def _is_out(direction) -> bool:
    return direction in (BindingDirection.OUT, BindingDirection.OUT.value)


def _is_out_annotation(annotation) -> bool:
    origin = typing.get_origin(annotation) or annotation
    return isinstance(origin, type) and issubclass(origin, func.Out)


def _generic_in(pytype) -> bool:
    return pytype in (str, bytes)


def _generic_out(pytype) -> bool:
    return pytype in (str, bytes, bytearray)


def check_input(binding_type: str, pytype) -> bool:
    converter = meta.get_binding_registry().get(binding_type)
    if converter is not None:
        return converter.check_input_type_annotation(pytype)
    return _generic_in(pytype)


def check_output(binding_type: str, pytype) -> bool:
    converter = meta.get_binding_registry().get(binding_type)
    if converter is not None:
        return converter.check_output_type_annotation(pytype)
    return _generic_out(pytype)


def load_problems(function) -> list[str]:
    """Problems the worker would report for an indexed ``Function`` (from ``app.get_functions()``)."""
    problems: list[str] = []
    user = function.get_user_function()
    bindings = {b.name: b for b in function.get_bindings()}
    ret = bindings.pop("$return", None)
    if ret is not None and not _is_out(ret.direction):
        problems.append("$return binding must be out")
    params = dict(inspect.signature(user).parameters)
    try:
        hints = typing.get_type_hints(user)
    except Exception as exc:  # unresolved string annotation: the worker fails too
        return [f"annotations do not resolve: {exc}"]
    if "context" in params and "context" not in bindings:
        if "context" in hints and hints["context"] is not func.Context:
            problems.append("the 'context' parameter must be annotated func.Context")
        params.pop("context")
    missing_in_python = set(bindings) - set(params)
    missing_in_bindings = set(params) - set(bindings)
    if missing_in_python:
        problems.append(f"bindings without a parameter: {sorted(missing_in_python)}")
    if missing_in_bindings:
        problems.append(f"parameters without a binding: {sorted(missing_in_bindings)}")
    for name, binding in bindings.items():
        if name not in params or name not in hints:
            continue
        annotation = hints[name]
        is_out = _is_out(binding.direction)
        if _is_out_annotation(annotation):
            if not is_out:
                problems.append(f"{name}: func.Out on an in binding")
                continue
            (inner,) = typing.get_args(annotation) or (object,)
            if not check_output(binding.type, inner):
                problems.append(f"{name}: {binding.type} does not accept Out[{inner}]")
        elif is_out:
            problems.append(f"{name}: out binding {binding.type} needs a func.Out annotation")
        elif not check_input(binding.type, annotation):
            problems.append(f"{name}: {binding.type} does not accept annotation {annotation}")
    returns = hints.get("return", type(None))
    if ret is not None and returns is not type(None):
        if not check_output(ret.type, returns):
            problems.append(f"return annotation {returns} does not match $return {ret.type}")
    trigger = function.get_trigger()
    converter = meta.get_binding_registry().get(trigger.type)
    if ret is None and returns is not type(None) and converter is not None and converter.has_implicit_output():
        # activity/orchestration triggers return through the trigger binding itself
        if not converter.check_output_type_annotation(returns):
            problems.append(f"return annotation {returns} does not match the {trigger.type} trigger's output")
    return problems
