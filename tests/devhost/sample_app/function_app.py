"""A small Functions app exercising what devhost supports (the tests in tests/devhost drive it)."""

import asyncio
import json
import logging
import time
from datetime import timedelta
from pathlib import Path

import azure.durable_functions as df
import azure.functions as func

app = df.DFApp(http_auth_level=func.AuthLevel.FUNCTION)
bp = df.Blueprint()


# ---- HTTP ---------------------------------------------------------------------------------
@app.route(route="items/{id:int}/{*rest}", methods=["GET", "POST"])
def item(req: func.HttpRequest) -> func.HttpResponse:
    body = {
        "method": req.method,
        "route": dict(req.route_params),
        "query": dict(req.params),
        "body": req.get_body().decode(),
        "header": req.headers.get("x-sample"),
    }
    return func.HttpResponse(json.dumps(body), mimetype="application/json", headers={"x-echo": "1"})


@app.route(route="ping", auth_level=func.AuthLevel.ANONYMOUS)
async def ping(req: func.HttpRequest) -> str:
    return "pong"


# ---- queues -------------------------------------------------------------------------------
@app.queue_trigger(arg_name="msg", queue_name="%WORK_QUEUE%", connection="SampleStorage")
@app.queue_output(arg_name="done", queue_name="work-done", connection="SampleStorage")
def work(msg: func.QueueMessage, done: func.Out[str]) -> None:
    text = msg.get_body().decode()
    if text.startswith("slow"):  # still running when the host stops
        logging.warning("working on %s", text)
        time.sleep(20)
    if text.startswith("fail"):
        raise RuntimeError(f"refusing {text!r} (attempt {msg.dequeue_count})")
    done.set(json.dumps({"text": text, "id": msg.id, "dequeue_count": msg.dequeue_count,
                         "inserted": msg.insertion_time is not None, "pop_receipt": bool(msg.pop_receipt)}))


# ---- timer --------------------------------------------------------------------------------
@app.timer_trigger(arg_name="timer", schedule="*/2 * * * * *", run_on_startup=True)
@app.queue_output(arg_name="ticks", queue_name="timer-ticks", connection="AzureWebJobsStorage")
def tick(timer: func.TimerRequest, ticks: func.Out[str]) -> None:
    ticks.set(json.dumps({"past_due": timer.past_due}))


# ---- durable: client ----------------------------------------------------------------------
@app.route(route="orchestrators/{name}/{instance_id?}", methods=["POST"])
@app.durable_client_input(client_name="client")
async def start(req: func.HttpRequest, client: df.DurableOrchestrationClient) -> func.HttpResponse:
    body = req.get_body()
    instance_id = await client.start_new(req.route_params["name"], req.route_params.get("instance_id"),
                                         json.loads(body) if body else None)
    return client.create_check_status_response(req, instance_id)


@app.route(route="status/{instance_id}", methods=["GET"])
@app.durable_client_input(client_name="client")
async def status(req: func.HttpRequest, client: df.DurableOrchestrationClient) -> func.HttpResponse:
    st = await client.get_status(req.route_params["instance_id"])
    if not st:
        return func.HttpResponse("unknown", status_code=404)
    return func.HttpResponse(json.dumps({
        "runtime_status": st.runtime_status.value, "custom_status": st.custom_status, "output": st.output,
    }), mimetype="application/json")


@app.route(route="terminate/{instance_id}", methods=["POST"], auth_level=func.AuthLevel.ADMIN)
@app.durable_client_input(client_name="client")
async def terminate(req: func.HttpRequest, client: df.DurableOrchestrationClient) -> func.HttpResponse:
    await client.terminate(req.route_params["instance_id"], "stopped by test")
    return func.HttpResponse(status_code=202)


# ---- durable: orchestrators (in a blueprint, like the real app) ---------------------------
@bp.orchestration_trigger(context_name="context")
def eternal(context: df.DurableOrchestrationContext):
    """One generation: fan-out to two activities, record, wait, continue as new."""
    state = context.get_input() or {}
    gen = state.get("gen", 0)
    results = yield context.task_all([
        context.call_activity("double", gen),
        context.call_activity("slow_echo", {"value": gen, "seconds": 0.1}),
    ])
    yield context.call_activity("record", {"gen": gen, "results": results})
    context.set_custom_status({"gen": gen, "results": results})
    if gen + 1 >= state.get("generations", 3):
        return {"finished_after": gen + 1}
    yield context.create_timer(context.current_utc_datetime + timedelta(seconds=state.get("pause", 1)))
    context.continue_as_new({**state, "gen": gen + 1})


@bp.orchestration_trigger(context_name="context")
def race(context: df.DurableOrchestrationContext):
    """A slow activity against a timer: the first one wins (task_any)."""
    args = context.get_input()
    work = context.call_activity("slow_echo", {"value": "activity", "seconds": args["activity_seconds"]})
    timeout = context.create_timer(context.current_utc_datetime + timedelta(seconds=args["timeout_seconds"]))
    context.set_custom_status("racing")
    winner = yield context.task_any([work, timeout])
    if winner == work:
        timeout.cancel()
        context.set_custom_status("activity won")
        return work.result
    context.set_custom_status("timer won")
    return "timeout"


@bp.orchestration_trigger(context_name="context")
def broken(context: df.DurableOrchestrationContext):
    yield context.call_activity("double", 1)
    raise ValueError("broken on purpose")


@bp.orchestration_trigger(context_name="context")
def failing_activity(context: df.DurableOrchestrationContext):
    try:
        yield context.call_activity("explode", "boom")
    except Exception as exc:  # activity failures surface as exceptions in the orchestrator
        return f"caught: {exc}"


@bp.orchestration_trigger(context_name="context")
def waiter(context: df.DurableOrchestrationContext):
    value = yield context.wait_for_external_event("go")
    return {"got": value}


@bp.orchestration_trigger(context_name="context")
def overlapping(context: df.DurableOrchestrationContext):
    """Like the app's listener window B: a long activity still runs when the generation continues as new.

    Generations before ``generations`` start ``tracked_run`` and move on at once (its result can
    never reach them); the last one calls ``double``, waits ``pause`` seconds and completes.
    """
    state = context.get_input()
    gen = state.get("gen", 0)
    context.set_custom_status({"gen": gen})
    if gen < state["generations"]:
        long_run = context.call_activity("tracked_run", {"run": f"g{gen}", "seconds": state["seconds"],
                                                         "dir": state["dir"]})
        yield context.task_any([long_run, context.create_timer(context.current_utc_datetime)])
        context.continue_as_new({**state, "gen": gen + 1})
        return
    doubled = yield context.call_activity("double", gen)
    yield context.create_timer(context.current_utc_datetime + timedelta(seconds=state.get("pause", 0)))
    return {"finished": gen, "doubled": doubled}


# ---- durable: activities ------------------------------------------------------------------
@bp.activity_trigger(input_name="value")
def double(value: int) -> int:
    time.sleep(0.05)  # sync: runs in a worker thread
    return value * 2


@bp.activity_trigger(input_name="payload")
async def slow_echo(payload: dict):
    await asyncio.sleep(payload["seconds"])
    return payload["value"]


@bp.activity_trigger(input_name="entry")
@bp.queue_output(arg_name="log", queue_name="orchestration-log", connection="SampleStorage")
def record(entry: dict, log: func.Out[str]) -> str:
    log.set(json.dumps(entry))
    return "recorded"


@bp.activity_trigger(input_name="job")
async def tracked_run(job: dict) -> str:
    """Appends ``start <run>`` / ``end <run>`` lines to ``<dir>/runs.log``: every delivery is visible."""
    path = Path(job["dir"]) / "runs.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as out:
        out.write(f"start {job['run']}\n")
    await asyncio.sleep(job["seconds"])
    with path.open("a") as out:
        out.write(f"end {job['run']}\n")
    return f"ran {job['run']}"


@bp.activity_trigger(input_name="text")
def explode(text: str) -> str:
    logging.info("exploding")
    raise RuntimeError(text)


app.register_functions(bp)
