"""`GET /health` and `GET /metrics` on the page's own server, for load balancers, uptime
checks and dashboards.

- `/health` answers anyone: 200 with a small JSON state when a model is loaded and its
  engine can answer, 503 with the reason (and `Retry-After`) otherwise: while the model is
  downloaded, exported or loaded, with how far that has got ("preparing"), or why it
  failed ("failed").
- `/metrics` is Prometheus' text (phi3ui/metrics.py) for those `/v1` serves: holders of the
  API key when one is set; nobody on a server reachable beyond its machine without one.

- `NotReady` gives raw `/chat` calls the same 503 while no model is loaded.

Nothing here imports Gradio; `server.py` mounts `routes()` beside /v1.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from .errors import RETRY_S
from .metrics import CONTENT_TYPE
from .openai_api import Access, ApiError
from .service import ChatService


@dataclass
class StatusApi:
    service: ChatService
    access: Access = field(default_factory=Access)  # who may read /metrics: as for /v1

    def routes(self) -> list[Route]:
        return [Route("/health", self.health, methods=["GET"]), Route("/metrics", self.metrics, methods=["GET"])]

    def state(self) -> tuple[int, dict]:
        """The status code and body of `/health`."""
        backend = self.service.backend
        loaded = backend.loaded
        if loaded is None:
            preparing = backend.preparing()
            if preparing is None:
                return 503, {"status": "preparing", "reason": "No model is loaded yet."}
            status = "failed" if preparing.failure else "preparing"
            return 503, {"status": status, "reason": str(backend.not_ready()), "progress": preparing.as_dict()}
        engine = loaded.engine
        if engine.unavailable:
            return 503, {"status": "unavailable", "reason": engine.unavailable}
        return 200, {"status": "ok", "model": loaded.model_name(), "engine": engine.name,
                     "context_window": self.service.backend.limits.window(engine.context_window),
                     "slots": engine.slots.count, "slots_busy": engine.slots.count - engine.slots.free,
                     "waiting": engine.slots.waiting}

    async def health(self, request: Request) -> Response:
        status, body = self.state()
        return self.response(status, body)

    @staticmethod
    def response(status: int, body: dict) -> Response:
        """JSON, never cached; a 503 says when to ask again, unless the start failed for good."""
        headers = {"Retry-After": str(RETRY_S)} if status == 503 and body.get("status") != "failed" else {}
        return JSONResponse(body, status_code=status, headers={**headers, "Cache-Control": "no-store"})

    async def metrics(self, request: Request) -> Response:
        try:
            self.access.check(request.headers.get("authorization"), request.headers.get("host"), what="/metrics")
        except ApiError as exc:
            return exc.response()
        return Response(self.service.metrics.text(), media_type=CONTENT_TYPE, headers={"Cache-Control": "no-store"})


CHAT_CALL = "/gradio_api/call/chat"  # where raw HTTP clients start a /chat answer


class NotReady:
    """ASGI middleware: while no model is loaded, a raw `/chat` call gets 503 with
    `Retry-After` and how far the preparation has got, as `/v1` does. (Gradio would take the
    call, answer 200 with an event id, and tell the refusal only in the stream; gradio_client
    callers still get that refusal's text as their error.)"""

    def __init__(self, app: ASGIApp, status: StatusApi):
        self.app, self.status = app, status

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (scope["type"] == "http" and scope["method"] == "POST" and scope["path"].rstrip("/") == CHAT_CALL
                and self.status.service.backend.loaded is None):
            _, body = self.status.state()
            await self.status.response(503, {"error": body["reason"], **body})(scope, receive, send)
            return
        await self.app(scope, receive, send)
