"""HTTP triggers under ``/api/``: route templates, methods, auth levels, HttpRequest/HttpResponse.

Route templates follow ASP.NET's syntax as far as Functions apps use it: ``{name}``,
``{name?}`` (optional), ``{*name}`` (catch-all, may be empty), and constraints
``{id:int}``, ``{x:alpha}``, ``{g:guid}``, ``{b:bool}``, ``{n:long}``, ``{d:double}``,
``{r:regex(...)}``. Matching is case-insensitive; literal routes win over parameterised ones.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from urllib.parse import unquote

import azure.functions as func
from aiohttp import web

from .invoker import Invoker, describe_exception
from .keys import Keys
from .loader import FunctionInfo

log = logging.getLogger("devhost.http")

ROUTE_PREFIX = "api"

_CONSTRAINTS = {
    None: r"[^/]+",
    "int": r"-?\d+",
    "long": r"-?\d+",
    "double": r"-?\d+(?:\.\d+)?",
    "decimal": r"-?\d+(?:\.\d+)?",
    "float": r"-?\d+(?:\.\d+)?",
    "bool": r"(?:true|false)",
    "alpha": r"[A-Za-z]+",
    "guid": r"[0-9A-Fa-f]{8}-?[0-9A-Fa-f]{4}-?[0-9A-Fa-f]{4}-?[0-9A-Fa-f]{4}-?[0-9A-Fa-f]{12}",
    "datetime": r"[^/]+",
}
_PARAM = re.compile(r"^\{(\*)?([A-Za-z_][A-Za-z0-9_]*)(\?)?(?::([a-z]+)(?:\((.*)\))?)?(\?)?\}$")


class RouteError(ValueError):
    """A route template devhost cannot parse."""


@dataclass
class Route:
    """One HTTP-triggered function's compiled route."""

    info: FunctionInfo
    template: str
    pattern: re.Pattern
    methods: set[str] | None
    auth_level: str
    specificity: tuple

    def match(self, path: str) -> dict | None:
        m = self.pattern.fullmatch(path)
        if m is None:
            return None
        return {k: unquote(v) for k, v in m.groupdict().items() if v is not None}


def compile_route(template: str) -> tuple[re.Pattern, tuple]:
    """Template -> (regex over the path after ``/api/``, sort key: more literal first)."""
    template = template.strip("/")
    parts = []
    literals = params = 0
    catch_all = False
    segments = template.split("/") if template else []
    for index, segment in enumerate(segments):
        m = _PARAM.match(segment)
        if m is None:
            if "{" in segment:
                raise RouteError(f"route {template!r}: unsupported segment {segment!r}")
            parts.append(("/" if index else "") + re.escape(segment))
            literals += 1
            continue
        star, name, opt1, constraint, arg, opt2 = m.groups()
        if star:
            if index != len(segments) - 1:
                raise RouteError(f"route {template!r}: catch-all must be the last segment")
            catch_all = True
            body = f"(?P<{name}>.*)"
            parts.append(f"(?:/{body})?" if index else f"{body}")
            continue
        if constraint == "regex" and arg:
            expr = arg
        elif constraint in _CONSTRAINTS:
            expr = _CONSTRAINTS[constraint]
        elif constraint in ("minlength", "maxlength", "length", "min", "max", "range"):
            expr = _CONSTRAINTS[None]
        else:
            raise RouteError(f"route {template!r}: unsupported constraint {constraint!r}")
        group = f"(?P<{name}>{expr})"
        if opt1 or opt2:
            parts.append(f"(?:/{group})?" if index else f"(?:{group})?")
        else:
            parts.append(("/" if index else "") + group)
        params += 1
    pattern = re.compile("".join(parts), re.IGNORECASE)
    return pattern, (catch_all, -literals, params)


def build_routes(functions: list[FunctionInfo]) -> list[Route]:
    routes = []
    for info in functions:
        trigger = info.trigger
        template = trigger.get("route") or info.name
        pattern, specificity = compile_route(template)
        methods = {m.upper() for m in trigger.get("methods") or []} or None
        routes.append(Route(info, template, pattern, methods, str(trigger.get("authLevel", "function")).lower(),
                            specificity))
    routes.sort(key=lambda r: r.specificity)
    return routes


def to_http_request(request: web.Request, body: bytes, route_params: dict) -> func.HttpRequest:
    # The URL as it arrived (raw path and query, dot segments and escapes untouched): yarl's
    # request.url would resolve "..". Azure's front end resolves them before routing; handing the
    # app the raw form is the stricter model (the app must refuse them itself).
    return func.HttpRequest(
        method=request.method,
        url=f"{request.scheme}://{request.host}{request.raw_path}",
        headers={k: v for k, v in request.headers.items()},
        params={k: v for k, v in request.query.items()},
        route_params=route_params,
        body=body,
    )


def to_web_response(value) -> web.Response:
    """The function's ``$return`` for an ``http`` output -> aiohttp response."""
    if value is None:
        return web.Response(status=204)
    if isinstance(value, func.HttpResponse):
        headers = {k: v for k, v in value.headers.items()}
        response = web.Response(status=value.status_code, body=value.get_body())
        for key, val in headers.items():
            response.headers[key] = val
        if "content-type" not in {k.lower() for k in headers} and value.mimetype:
            charset = f"; charset={value.charset}" if value.charset else ""
            response.headers["Content-Type"] = f"{value.mimetype}{charset}"
        return response
    if isinstance(value, (bytes, bytearray)):
        return web.Response(status=200, body=bytes(value))
    if isinstance(value, str):
        return web.Response(status=200, text=value)
    return web.json_response(value)


class HttpHost:
    """aiohttp handler for ``/<routePrefix>/{tail}`` (host.json ``extensions.http.routePrefix``, default api)."""

    def __init__(self, functions: list[FunctionInfo], invoker: Invoker, keys: Keys, prefix: str = ROUTE_PREFIX) -> None:
        self.prefix = prefix
        self.routes = build_routes(functions)
        self.invoker = invoker
        self.keys = keys

    def find(self, path: str, method: str) -> tuple[Route | None, dict, bool]:
        """(route, params, method_allowed); a path match with another method gives (None, {}, False)."""
        path_matched = False
        for route in self.routes:
            params = route.match(path)
            if params is None:
                continue
            path_matched = True
            if route.methods is None or method in route.methods:
                return route, params, True
        return None, {}, not path_matched

    async def handle(self, request: web.Request) -> web.StreamResponse:
        raw = request.raw_path.split("?", 1)[0]
        lead = f"/{self.prefix}/" if self.prefix else "/"
        tail = raw[len(lead):] if raw.lower().startswith(lead.lower()) else ""
        route, params, method_ok = self.find(tail, request.method)
        if route is None:
            return web.Response(status=404 if method_ok else 405)
        # ASP.NET query lookups are case-insensitive: Azure accepts ?Code= as the key too.
        codes = [v for k, v in request.query.items() if k.lower() == "code"]
        presented = (codes[0] if codes else None) or request.headers.get("x-functions-key")
        if not self.keys.authorize(route.auth_level, route.info.name, presented):
            return web.Response(status=401)
        body = await request.read()
        origin = f"{request.scheme}://{request.host}"
        http_request = to_http_request(request, body, params)
        try:
            result = await self.invoker.call(route.info, {route.info.trigger["name"]: http_request}, origin=origin)
        except Exception as exc:
            log.exception("function %s failed: %s", route.info.name, describe_exception(exc))
            return web.Response(status=500)
        http_out = next((b for b in route.info.output_bindings if b["type"] == "http"), None)
        if http_out is None:
            return web.Response(status=204)
        if http_out["name"] == "$return":
            value = result.return_value
        else:
            value = result.outputs.get(http_out["name"])
        try:
            return to_web_response(value)
        except (TypeError, ValueError) as exc:
            log.error("function %s returned %r: %s", route.info.name, type(value), exc)
            return web.Response(status=500)
