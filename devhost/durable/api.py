"""The Durable extension's HTTP API, as the SDK's DurableOrchestrationClient calls it.

Served on the host itself under ``/runtime/webhooks/durabletask/`` (both the ``rpcBaseUrl`` the
client binding points at and the public management URLs of ``create_check_status_response``).
Locally these endpoints need no key (the host binds 127.0.0.1 only).
"""

from __future__ import annotations

import json

from aiohttp import web

from .service import DurableError, DurableService
from .store import Instance

PREFIX = "/runtime/webhooks/durabletask"
RUNNING = {"Pending", "Running", "ContinuedAsNew"}


def _loads(text):
    return None if text is None else json.loads(text)


def status_json(inst: Instance, show_history: bool = False, show_input: bool = True) -> dict:
    body = {
        "name": inst.name,
        "instanceId": inst.instance_id,
        "runtimeStatus": inst.status,
        "input": _loads(inst.input) if show_input else None,
        "customStatus": _loads(inst.custom_status),
        "output": _loads(inst.output),
        "createdTime": inst.created_time[:19] + "Z",
        "lastUpdatedTime": inst.last_updated_time[:19] + "Z",
    }
    if show_history:
        body["historyEvents"] = inst.history
    return body


def management_urls(origin: str, hub: str, instance_id: str = "INSTANCEID") -> dict:
    base = f"{origin}{PREFIX}/instances/{instance_id}"
    query = f"taskHub={hub}&connection=Storage"
    return {
        "id": instance_id,
        "statusQueryGetUri": f"{base}?{query}",
        "sendEventPostUri": f"{base}/raiseEvent/{{eventName}}?{query}",
        "terminatePostUri": f"{base}/terminate?reason={{text}}&{query}",
        "rewindPostUri": f"{base}/rewind?reason={{text}}&{query}",
        "purgeHistoryDeleteUri": f"{base}?{query}",
        "restartPostUri": f"{base}/restart?{query}",
        "suspendPostUri": f"{base}/suspend?reason={{text}}&{query}",
        "resumePostUri": f"{base}/resume?reason={{text}}&{query}",
    }


def client_binding(origin: str, rpc_origin: str, hub: str) -> str:
    """The durableClient input binding value (a JSON string) the SDK's middleware expects."""
    return json.dumps({
        "taskHubName": hub,
        "creationUrls": {
            "createNewInstancePostUri": f"{origin}{PREFIX}/orchestrators/{{functionName}}[/{{instanceId}}]",
            "createAndWaitOnNewInstancePostUri":
                f"{origin}{PREFIX}/orchestrators/{{functionName}}[/{{instanceId}}]?timeout={{timeoutInSeconds}}",
        },
        "managementUrls": management_urls(origin, hub),
        "baseUrl": f"{origin}{PREFIX}",
        "requiredQueryStringParameters": "",
        "rpcBaseUrl": f"{rpc_origin}{PREFIX}/",
        "httpBaseUrl": "",
        "maxGrpcMessageSizeInBytes": 0,
        "grpcHttpClientTimeout": "00:01:40",
    })


async def _json_body(request: web.Request):
    text = await request.text()
    if not text.strip():
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        raise DurableError(400, "Only application/json request content is supported") from None


def _error(exc: DurableError) -> web.Response:
    return web.json_response({"Message": str(exc), "ExceptionMessage": str(exc)}, status=exc.status)


def _origin(request: web.Request) -> str:
    return f"{request.scheme}://{request.host}"


def routes(service: DurableService) -> list[web.RouteDef]:
    async def start(request: web.Request) -> web.Response:
        try:
            data = await _json_body(request)
            inst = service.start_new(request.match_info["name"], request.match_info.get("id") or None, data)
        except DurableError as exc:
            return _error(exc)
        payload = management_urls(_origin(request), service.hub_name, inst.instance_id)
        return web.json_response(payload, status=202, headers={"Location": payload["statusQueryGetUri"]})

    async def status(request: web.Request) -> web.Response:
        inst = service.get(request.match_info["id"])
        if inst is None:
            return web.Response(status=404)
        show_history = request.query.get("showHistory", "").lower() == "true"
        show_input = request.query.get("showInput", "true").lower() != "false"
        code = 202 if inst.status in RUNNING else 200
        if inst.status == "Failed" and request.query.get("returnInternalServerErrorOnFailure", "").lower() == "true":
            code = 500
        return web.json_response(status_json(inst, show_history, show_input), status=code)

    async def list_all(request: web.Request) -> web.Response:
        wanted = {s for s in request.query.get("runtimeStatus", "").split(",") if s}
        prefix = request.query.get("instanceIdPrefix", "")
        created_from = request.query.get("createdTimeFrom")
        created_to = request.query.get("createdTimeTo")
        found = [status_json(i, show_input=request.query.get("showInput", "").lower() == "true")
                 for i in service.list()
                 if (not wanted or i.status in wanted) and i.instance_id.startswith(prefix)
                 and (not created_from or i.created_time >= created_from)
                 and (not created_to or i.created_time <= created_to)]
        return web.json_response(found)

    async def terminate(request: web.Request) -> web.Response:
        try:
            service.terminate(request.match_info["id"], request.query.get("reason"))
        except DurableError as exc:
            return _error(exc)
        return web.Response(status=202)

    async def raise_event(request: web.Request) -> web.Response:
        try:
            data = await _json_body(request)
            service.raise_event(request.match_info["id"], request.match_info["event"], data)
        except DurableError as exc:
            return _error(exc)
        return web.Response(status=202)

    async def purge(request: web.Request) -> web.Response:
        if service.purge(request.match_info["id"]):
            return web.json_response({"instancesDeleted": 1})
        return web.Response(status=404)

    async def unsupported(request: web.Request) -> web.Response:
        return web.json_response({"Message": "not supported by devhost"}, status=501)

    return [
        web.post(PREFIX + "/orchestrators/{name}", start),
        web.post(PREFIX + "/orchestrators/{name}/{id}", start),
        web.get(PREFIX + "/instances/", list_all),
        web.get(PREFIX + "/instances", list_all),
        web.get(PREFIX + "/instances/{id}", status),
        web.delete(PREFIX + "/instances/{id}", purge),
        web.post(PREFIX + "/instances/{id}/terminate", terminate),
        web.post(PREFIX + "/instances/{id}/raiseEvent/{event}", raise_event),
        web.post(PREFIX + "/instances/{id}/{action:suspend|resume|rewind|restart}", unsupported),
    ]
