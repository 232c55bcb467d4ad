"""Invoke a user function the way the Python worker does: bound arguments in, outputs out.

Sync functions run in a thread pool, async ones on the event loop. ``func.Out`` parameters get
a capture object; after a successful invocation their values (and ``$return``) are handed to the
output handlers (queue outputs are written by :mod:`devhost.queues`).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import azure.functions as func

from .loader import FunctionInfo

log = logging.getLogger("devhost.invoke")

# Long sync functions (listener windows) must not starve each other: the worker's default
# pool is small, so devhost uses a generous one of its own.
_EXECUTOR = ThreadPoolExecutor(max_workers=64, thread_name_prefix="devhost-fn")


class OutValue(func.Out):
    """What the worker passes for a ``func.Out[T]`` parameter."""

    def __init__(self) -> None:
        self._value = None
        self.is_set = False

    def set(self, val) -> None:
        self._value = val
        self.is_set = True

    def get(self):
        return self._value


class _TraceContext:
    trace_parent = None
    trace_state = None
    attributes: dict = {}


class InvocationContext(func.Context):
    """The ``context`` argument (func.Context) a function may declare."""

    def __init__(self, function_name: str, function_directory: str) -> None:
        self._invocation_id = str(uuid.uuid4())
        self._function_name = function_name
        self._function_directory = function_directory
        self._tls = threading.local()

    @property
    def invocation_id(self) -> str:
        return self._invocation_id

    @property
    def thread_local_storage(self):
        return self._tls

    @property
    def function_name(self) -> str:
        return self._function_name

    @property
    def function_directory(self) -> str:
        return self._function_directory

    @property
    def trace_context(self):
        return _TraceContext()

    @property
    def retry_context(self):
        return None


@dataclass
class Invocation:
    """The outcome of one successful invocation."""

    return_value: object
    outputs: dict[str, object] = field(default_factory=dict)  # binding name -> value set


class Invoker:
    """Calls functions with their bound arguments and applies their output bindings."""

    def __init__(self, app_dir: str) -> None:
        self.app_dir = app_dir
        self.output_handlers: dict = {}  # binding type -> async (binding, value)
        self.input_providers: dict = {}  # binding type -> (binding, request_url|None) -> value

    async def call(self, info: FunctionInfo, arguments: dict, origin: str | None = None) -> Invocation:
        """Invoke ``info`` with ``arguments`` (name -> value); apply outputs; raise on failure.

        ``origin`` (scheme://host:port of an HTTP request) lets input bindings such as
        durableClient build URLs the caller can reach.
        """
        kwargs = dict(arguments)
        for binding in info.bindings:
            if binding.get("direction") == "IN" and binding is not info.trigger and binding["name"] not in kwargs:
                provider = self.input_providers.get(binding["type"])
                if provider is None:
                    raise RuntimeError(f"function {info.name}: input binding type {binding['type']!r} "
                                       "is not supported by devhost")
                kwargs[binding["name"]] = provider(binding, origin)
        outs: dict[str, OutValue] = {}
        for binding in info.output_bindings:
            name = binding["name"]
            if name != "$return" and name not in kwargs:
                outs[name] = kwargs[name] = OutValue()
        if "context" in info.parameters and "context" not in kwargs:
            kwargs["context"] = InvocationContext(info.name, self.app_dir)
        kwargs = {k: v for k, v in kwargs.items() if k in info.parameters or not info.parameters}
        if info.is_async:
            result = await info.callable(**kwargs)
        else:
            loop = asyncio.get_running_loop()
            result = await loop.run_in_executor(_EXECUTOR, functools.partial(info.callable, **kwargs))
        outputs = {name: out.get() for name, out in outs.items() if out.is_set}
        for binding in info.output_bindings:
            name = binding["name"]
            value = result if name == "$return" else outputs.get(name)
            if value is None or (name != "$return" and name not in outputs):
                continue
            handler = self.output_handlers.get(binding["type"])
            if handler is not None:
                await handler(binding, value)
            elif binding["type"] != "http":
                log.warning("function %s: output binding type %r is not supported by devhost; value dropped",
                            info.name, binding["type"])
        return Invocation(result, outputs)


def describe_exception(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"
