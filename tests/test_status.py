"""`/health` and `/metrics` in process, on fake backends; tests/test_burst.py reads both from
the real app after real traffic."""

from __future__ import annotations

import json
from types import SimpleNamespace

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from phi3ui.chat import ChatBackend, HostPrompt

from phi3ui.engine import Slots
from phi3ui.fairness import FairUse, Gate
from phi3ui.openai_api import Access
from phi3ui.service import Caller, ChatService
from phi3ui.settings import GenerationSettings
from phi3ui.progress import Preparation
from phi3ui.status import CHAT_CALL, NotReady, StatusApi
from tests.test_page import FakeBackend


def client(backend, access: Access = Access()) -> tuple[TestClient, ChatService]:
    service = ChatService(backend, Gate(FairUse(rate_per_minute=60)))
    app = Starlette(routes=StatusApi(service, access).routes())
    return TestClient(app, base_url="http://127.0.0.1:7860"), service


def loaded(unavailable: str = "") -> FakeBackend:
    backend = FakeBackend(["Par", "is"])
    engine = SimpleNamespace(**vars(FakeBackend.engine), name="genai", slots=Slots(1), unavailable=unavailable)
    backend.engine = engine
    backend.loaded = SimpleNamespace(engine=engine, model_name=lambda folder=False: "bundled")
    return backend


def test_health_says_why_it_cannot_answer() -> None:
    starting = ChatBackend()
    response = client(starting)[0].get("/health")
    assert response.status_code == 503 and response.json()["status"] == "preparing"
    assert response.headers["retry-after"] == "5"

    response = client(loaded("The remote engine could not be reached: connection refused."))[0].get("/health")
    assert response.status_code == 503 and "connection refused" in response.json()["reason"]

    response = client(loaded())[0].get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "model": "bundled", "engine": "genai", "context_window": 100,
                               "slots": 1, "slots_busy": 0, "waiting": 0}


def preparing(backend: ChatBackend) -> Preparation:
    backend.preparation = preparation = Preparation("microsoft/Phi-3-mini-4k-instruct")
    preparation.plan("Downloading", "Exporting", "Loading")
    preparation.stage("Downloading")
    preparation.transfer(1_000_000_000, 7_600_000_000)
    preparation("model-00001-of-00002.safetensors")
    return preparation


def test_health_tells_how_far_the_preparation_has_got_and_why_it_failed() -> None:
    backend = ChatBackend()
    preparation = preparing(backend)
    response = client(backend)[0].get("/health")
    body = response.json()
    assert response.status_code == 503 and response.headers["retry-after"] == "5" and body["status"] == "preparing"
    assert "Downloading microsoft/Phi-3-mini-4k-instruct (stage 1 of 3, 1.0 GB of 7.6 GB," in body["reason"]
    assert {k: body["progress"][k] for k in ("stage", "stage_number", "stages", "bytes_done", "bytes_total")} == {
        "stage": "Downloading", "stage_number": 1, "stages": 3, "bytes_done": 1_000_000_000,
        "bytes_total": 7_600_000_000}
    assert body["progress"]["detail"] == "model-00001-of-00002.safetensors"

    preparation.fail("The disk is full (0 B free at /data).")
    body = client(backend)[0].get("/health").json()
    assert body["status"] == "failed" and "The disk is full" in body["reason"]
    backend.host_prompt = HostPrompt(locked=True)  # a public server names no paths of its own
    body = client(backend)[0].get("/health").json()
    assert body["status"] == "failed" and "/data" not in json.dumps(body)


def test_raw_chat_calls_get_503_until_a_model_is_loaded() -> None:
    async def chat(request):
        return PlainTextResponse("event id")

    def app(backend) -> TestClient:
        status = StatusApi(ChatService(backend))
        routes = [Route(CHAT_CALL, chat, methods=["POST"]), Route("/gradio_api/call/other", chat, methods=["POST"])]
        return TestClient(Starlette(routes=routes, middleware=[Middleware(NotReady, status=status)]))

    backend = ChatBackend()
    preparing(backend)
    refused = app(backend).post(CHAT_CALL, json={"data": ["Hi"]})
    assert refused.status_code == 503 and refused.headers["retry-after"] == "5"
    assert "not ready yet" in refused.json()["error"] and refused.json()["progress"]["stage"] == "Downloading"
    assert app(backend).post("/gradio_api/call/other").status_code == 200, "only /chat is refused"
    assert app(loaded()).post(CHAT_CALL, json={"data": ["Hi"]}).text == "event id"


def test_metrics_count_answers_and_refusals_by_door() -> None:
    http, service = client(loaded())
    with service.open(Caller("/v1", "1.2.3.4"), [], "hi", GenerationSettings(max_new_tokens=8)) as turn:
        assert "".join(turn) == "Paris"
        try:
            service.open(Caller("/v1", "1.2.3.4"), [], "again", GenerationSettings(max_new_tokens=8))
        except Exception as exc:  # noqa: BLE001 - the refusal itself is what is counted
            assert "One answer at a time" in str(exc)
        text = http.get("/metrics").text
        assert "phi3ui_requests_queued 1.0" in text  # the open turn holds its place
    text = http.get("/metrics").text
    assert 'phi3ui_requests_total{door="/v1",outcome="done"} 1.0' in text
    assert 'phi3ui_refusals_total{door="/v1",limit="busy"} 1.0' in text
    assert 'phi3ui_requests_total{door="/v1",outcome="refused"} 1.0' in text
    assert "phi3ui_answer_tokens_total 2.0" in text and "phi3ui_prompt_tokens_total 5.0" in text
    assert "phi3ui_requests_queued 0.0" in text and "phi3ui_slots 1.0" in text


def test_metrics_are_off_where_v1_is() -> None:
    public = Access.decide(None, host="0.0.0.0")
    response = client(loaded(), public)[0].get("/metrics")
    assert response.status_code == 403 and "/metrics is off" in response.json()["error"]["message"]
    keyed = Access.decide("k", host="0.0.0.0")
    http = client(loaded(), keyed)[0]
    assert http.get("/metrics").status_code == 401
    assert http.get("/metrics", headers={"Authorization": "Bearer k"}).status_code == 200
    assert http.get("/health").status_code == 200  # health answers anyone: a load balancer has no key
