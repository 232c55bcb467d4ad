"""The Functions app: the one DFApp, with the bridge's blueprints registered.

Everything else lives in the ``bridge`` package (see docs/app.md).
"""

import azure.durable_functions as df
import azure.functions as func

from bridge import admin, http_send, listener_orchestration, queue_send, telemetry

telemetry.configure()  # Azure Monitor / OTLP when configured, else nothing (docs/app.md, Tracing)

app = df.DFApp(http_auth_level=func.AuthLevel.FUNCTION)
app.register_functions(http_send.bp)
app.register_functions(queue_send.bp)
app.register_functions(listener_orchestration.bp)
app.register_functions(admin.bp)
