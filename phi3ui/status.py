"""`GET /health` and `GET /metrics` on the page's own server, for load balancers, uptime
checks and dashboards.

- `/health` answers anyone: 200 with a small JSON state when a model is loaded and its
  engine can answer, 503 with the reason (and `Retry-After`) otherwise.
- `/metrics` is Prometheus' text (phi3ui/metrics.py) for those `/v1` serves: holders of the
  API key when one is set; nobody on a server reachable beyond its machine without one.

Nothing here imports Gradio; `server.py` mounts `routes()` beside /v1.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

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
        loaded = self.service.backend.loaded
        if loaded is None:
            return 503, {"status": "loading", "reason": "No model is loaded yet."}
        engine = loaded.engine
        if engine.unavailable:
            return 503, {"status": "unavailable", "reason": engine.unavailable}
        return 200, {"status": "ok", "model": loaded.model_name(), "engine": engine.name,
                     "context_window": self.service.backend.limits.window(engine.context_window),
                     "slots": engine.slots.count, "slots_busy": engine.slots.count - engine.slots.free,
                     "waiting": engine.slots.waiting}

    async def health(self, request: Request) -> Response:
        status, body = self.state()
        headers = {"Retry-After": str(RETRY_S)} if status == 503 else {}
        return JSONResponse(body, status_code=status, headers={**headers, "Cache-Control": "no-store"})

    async def metrics(self, request: Request) -> Response:
        try:
            self.access.check(request.headers.get("authorization"), request.headers.get("host"), what="/metrics")
        except ApiError as exc:
            return exc.response()
        return Response(self.service.metrics.text(), media_type=CONTENT_TYPE, headers={"Cache-Control": "no-store"})
