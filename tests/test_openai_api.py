"""OpenAI's chat API at /v1: request checks, event shapes, keys and the engines' stop strings
without a server; then the real `openai` client against the real app on the bundled model."""

from __future__ import annotations

import base64
import json
import re
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

import anyio
import httpx
import openai
import pytest
from starlette.applications import Starlette
from starlette.testclient import TestClient

from tests.app_process import AppProcess
from phi3ui.answer import Stats
from phi3ui.attachments import message_with, read
from phi3ui.chat import ChatBackend, Loaded
from phi3ui.engine import StopText
from phi3ui.errors import MODEL_FAILED, RemoteError
from phi3ui.fairness import FairUse, Gate
from phi3ui.openai_api import (
    DONE,
    Access,
    ApiError,
    Completion,
    OpenAIApi,
    finish_reason,
    parse_chat,
    sse,
    usage,
)
from phi3ui.service import Caller, ChatService
from phi3ui.settings import BUNDLED, GenerationSettings, Limits, RuntimeSettings
from tests.pdf_files import text_pdf
from tests.test_public_page import INTERNAL, Backend, exposes
from tests.waiting import wait_until

server = pytest.mark.server
QUESTION = "What is the capital of France?"
ASK = [{"role": "user", "content": QUESTION}]
KEY = "sk-test-4f1c9a"
PAGE_LOGIN = ("host", "page-pass-7d2e")
HOST_PROMPT = "You are a concise assistant for the OpenVINO workshop."
# Greedy, the bundled model counts on for 3,000 tokens and more on both engines.
ENDLESS = [{"role": "user", "content": "Count from 1 to 1000, one number per line."}]


def body(**fields) -> dict:
    return {"model": "bundled", "messages": ASK, **fields}


# --- requests, without a server --------------------------------------------------------------
def test_a_request_becomes_the_backends_conversation_and_settings() -> None:
    call = parse_chat(body(messages=[
        {"role": "system", "content": "Be brief."}, {"role": "developer", "content": "Use French."},
        {"role": "user", "content": "Hi"}, {"role": "assistant", "content": [{"type": "text", "text": "Hello"}]},
        {"role": "user", "content": QUESTION}], stop="\n\n", max_completion_tokens=64, seed=7), Limits())
    assert (call.system, call.message) == ("Be brief.\n\nUse French.", QUESTION)
    assert call.history == [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    assert call.settings == GenerationSettings(max_new_tokens=64, temperature=1.0, top_p=1.0, top_k=0, seed=7,
                                               stop=("\n\n",), system_prompt=call.system)
    assert not call.stream and not call.include_usage


def test_defaults_follow_openai_and_the_servers_cap() -> None:
    settings = parse_chat(body(), Limits(max_new_tokens=256)).settings
    assert (settings.max_new_tokens, settings.temperature, settings.top_p, settings.stop) == (256, 1.0, 1.0, ())


def test_fields_at_their_neutral_value_are_accepted() -> None:
    call = parse_chat(body(n=1, frequency_penalty=0, presence_penalty=0.0, logprobs=False, store=False,
                           response_format={"type": "text"}, tool_choice="none", stream=True,
                           stream_options={"include_usage": True}, user=None), Limits())
    assert call.stream and call.include_usage


@pytest.mark.parametrize("fields, param, words", [
    ({"n": 2}, "n", "`n` = 2 is not supported"),
    ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools", "`tools` is not supported"),
    ({"logprobs": True}, "logprobs", "not supported"),
    ({"response_format": {"type": "regex"}}, "response_format", "is not one of"),
    ({"response_format": {"type": "json_schema"}}, "response_format", "with a `name` and a `schema`"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "array",
      "uniqueItems": True}}}}, "response_format", "`uniqueItems` at schema: items are not kept unique"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nope"}}}},
     "response_format", "not a valid JSON Schema at ['type']"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": [1]}}},
     "response_format", "must be an object"),
    ({"top_k": 5}, "top_k", "`top_k` is not supported"),
    ({"max_tokens": 5000}, "max_tokens", "Max new tokens must be between 1 and 4096, not 5000"),
    ({"max_completion_tokens": 0}, "max_completion_tokens", "between 1 and 4096"),
    ({"max_tokens": 5, "max_completion_tokens": 6}, "max_tokens", "disagree"),
    ({"max_tokens": "5"}, "max_tokens", "valid integer"),
    ({"temperature": 2.5}, "temperature", "Temperature must be between 0 and 2"),
    ({"top_p": 0}, "top_p", "Top-p must be above 0"),
    ({"seed": -1}, "seed", "Seed must be between"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop", "At most 4 stop strings"),
    ({"stop": [""]}, "stop", "1 to 200 characters"),
    ({"stop": [1]}, "stop", "stop must be text or a list of texts"),
    ({"stream_options": {"include_usage": True}}, "stream_options", "only with `stream`"),
    ({"stream": True, "stream_options": {"include_obfuscation": True}}, "stream_options.include_obfuscation",
     "not supported"),
    ({"messages": []}, "messages", "at least 1"),
    ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].role", "Input should be"),
    ({"messages": [{"role": "user", "content": "x", "name": "bob"}]}, "messages[0].name", "not supported"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
     "messages[0].content", "must be text"),
    ({"messages": [*ASK, {"role": "assistant", "content": "Paris"}]}, "messages", "last message must be the user's"),
    ({"messages": [*ASK, {"role": "system", "content": "x"}, *ASK]}, "messages[1].role", "must come first"),
    ({"messages": [{"role": "system", "content": "x" * 16_001}, *ASK]}, "messages", "The system prompt is"),
])
def test_bad_fields_are_refused_by_name(fields, param, words) -> None:
    with pytest.raises(ApiError) as refused:
        parse_chat(body(**fields), Limits())
    assert (refused.value.status, refused.value.param) == (400, param)
    assert words in refused.value.message
    assert refused.value.body()["error"] == {"message": refused.value.message, "type": "invalid_request_error",
                                             "param": param, "code": refused.value.code}


def test_a_body_that_is_not_an_object_is_refused() -> None:
    with pytest.raises(ApiError, match="JSON object"):
        parse_chat([1, 2], Limits())


# --- responses ----------------------------------------------------------------------------
def test_chunks_have_openais_shape() -> None:
    completion = Completion("bundled", id="chatcmpl-1", created=5)
    head = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 5, "model": "bundled",
            "system_fingerprint": None}
    assert completion.chunk({"role": "assistant", "content": ""}) == {
        **head, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                             "finish_reason": None}]}
    assert completion.chunk({}, "length", with_usage=True)["choices"][0]["finish_reason"] == "length"
    assert completion.chunk({}, with_usage=True)["usage"] is None
    counts = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    assert completion.usage_chunk(counts) == {**head, "choices": [], "usage": counts}
    whole = completion.whole("Paris", "stop", counts)
    assert whole["object"] == "chat.completion" and whole["usage"] == counts
    assert whole["choices"] == [{"index": 0, "message": {"role": "assistant", "content": "Paris", "refusal": None},
                                 "logprobs": None, "finish_reason": "stop"}]


def test_events_are_one_json_line_each_and_end_with_done() -> None:
    event = sse({"text": "a\nb", "emoji": "🙂"})
    assert event == 'data: {"text":"a\\nb","emoji":"🙂"}\n\n'
    assert DONE == "data: [DONE]\n\n"


def test_usage_and_finish_reason_come_from_the_answers_stats() -> None:
    from phi3ui.answer import Stats

    cut = Stats(12, 5, 0.1, 10.0, 0.5, finish="length")
    assert finish_reason(cut) == "length" and usage(cut, 0) == {"prompt_tokens": 12, "completion_tokens": 5,
                                                                 "total_tokens": 17}
    assert finish_reason(Stats(12, 3, 0.1, 10.0, 0.5, finish="stop")) == "stop"
    assert finish_reason(None) == "stop" and usage(None, 9)["prompt_tokens"] == 9


# --- stop strings (the engines' text) --------------------------------------------------------
def feed(stops: tuple[str, ...], pieces: list[str]) -> tuple[list[str], StopText]:
    cut = StopText(stops)
    shown = [cut.feed(piece) for piece in pieces]
    return [*shown, cut.flush()], cut


def test_text_ends_before_a_stop_string_split_across_pieces() -> None:
    shown, cut = feed((" Paris", "zzz"), ["The capital", " of France is P", "ar", "is, France."])
    assert "".join(shown) == "The capital of France is" and cut.matched
    assert shown[1] == " of France is"  # " P" held back: it may begin the stop string
    assert cut.cut("The capital of France is Paris, France.") == "The capital of France is"


def test_held_text_that_is_no_stop_string_comes_out() -> None:
    shown, cut = feed(("\n\n",), ["One\n", "two\n", "\n", "three"])
    assert "".join(shown) == "One\ntwo" and cut.matched
    shown, cut = feed(("ENDS",), ["The E", "NDING", " is near EN"])
    assert shown == ["The ", "ENDING", " is near ", "EN"] and not cut.matched


def test_without_stop_strings_text_passes_as_it_comes() -> None:
    assert feed((), ["a", "b"])[0] == ["a", "b", ""]


# --- keys -----------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, served", [
    ({"host": "127.0.0.1"}, True),
    ({"host": "localhost"}, True),
    ({"host": "::1"}, True),
    ({"host": "0.0.0.0"}, False),
    ({"host": "192.168.1.20"}, False),
    ({"host": "myhost.example"}, False),
    ({"host": "127.0.0.1", "share": True}, False),
    ({"host": "127.0.0.1", "spaces": True}, False),
    ({"host": "127.0.0.1", "page_login": True}, False),
    ({"host": "127.0.0.1", "behind_proxy": True}, False),
])
def test_without_a_key_only_a_loopback_only_server_serves_v1(kwargs, served) -> None:
    access = Access.decide(None, **kwargs)
    assert (not access.off_because) == served
    if not served:
        with pytest.raises(ApiError) as refused:
            access.check("Bearer anything")
        assert refused.value.status == 403 and "--api-key" in refused.value.message
        assert "not served" in access.describe("http://x/v1") and "--api-key" in access.describe("http://x/v1")
    assert Access.decide(" k ", **kwargs) == Access("k")  # with a key: served, to its holders


@pytest.mark.parametrize("header, status", [
    (None, 401), ("", 401), ("Bearer", 401), ("Basic " + KEY, 401), ("Bearer wrong", 401),
    (f"Bearer {KEY}", None), (f"bearer  {KEY} ", None),
])
def test_a_key_is_checked_as_a_bearer_token(header, status) -> None:
    access = Access.decide(KEY, host="0.0.0.0", share=True)
    if status is None:
        access.check(header)
        return
    with pytest.raises(ApiError) as refused:
        access.check(header)
    assert refused.value.status == 401 and KEY not in refused.value.message


# --- the app in process, on a fake backend -----------------------------------------------------
class FakeBackend(Backend):
    concurrency = 1


def in_process(backend: FakeBackend, **kwargs) -> TestClient:
    return TestClient(Starlette(routes=[OpenAIApi(backend, **kwargs).mount()]), base_url="http://127.0.0.1:7860")


def events(response: httpx.Response) -> list:
    lines = [line for line in response.text.split("\n\n") if line]
    assert all(line.startswith("data: ") for line in lines)
    return [line[6:] if line == DONE.strip() else json.loads(line[6:]) for line in lines]


def test_in_process_stream_is_role_deltas_finish_usage_done() -> None:
    response = in_process(FakeBackend(["Par", "is"])).post(
        "/v1/chat/completions", json=body(stream=True, stream_options={"include_usage": True}))
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
    *chunks, done = events(response)
    assert done == "[DONE]"
    assert [c["choices"][0]["delta"] for c in chunks[:-1] if c["choices"]] == [
        {"role": "assistant", "content": ""}, {"content": "Par"}, {"content": "is"}, {}]
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == {"prompt_tokens": 5, "completion_tokens": 2,
                                                                     "total_tokens": 7}
    assert len({c["id"] for c in chunks}) == 1


def test_in_process_errors() -> None:
    unloaded = FakeBackend([])
    unloaded.loaded = None
    response = in_process(unloaded).post("/v1/chat/completions", json=body())
    assert response.status_code == 503 and response.json()["error"]["code"] == "model_not_loaded"
    assert in_process(unloaded).get("/v1/models").json() == {"object": "list", "data": []}

    response = in_process(FakeBackend([])).post("/v1/chat/completions", json=body(model="gpt-4o"))
    assert response.status_code == 404 and response.json()["error"]["param"] == "model"
    response = in_process(FakeBackend([])).post("/v1/chat/completions", content=b"{not json",
                                                      headers={"Content-Type": "application/json"})
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_json"
    response = in_process(FakeBackend([])).get("/v1/embeddings")
    assert response.status_code == 404 and "POST /v1/chat/completions" in response.json()["error"]["message"]


def test_in_process_fair_use_refusal_says_when_to_retry() -> None:
    gate = Gate(FairUse(rate_per_minute=100))
    backend = FakeBackend(["ok"])
    service = ChatService(backend, gate)
    held = gate.admit("testclient", None)  # an answer of this address in flight (the page's or /v1's)
    response = in_process(backend, service=service).post("/v1/chat/completions", json=body())
    assert response.status_code == 429 and response.headers["retry-after"] == "2"
    assert response.json()["error"]["code"] == "one_at_a_time"
    held.release()
    assert in_process(backend, service=service).post("/v1/chat/completions", json=body()).status_code == 200


def test_in_process_locked_server_hides_model_errors(caplog) -> None:
    client = in_process(FakeBackend(["par"], error=INTERNAL), lock_settings=True)
    response = client.post("/v1/chat/completions", json=body())
    assert response.status_code == 500 and response.json()["error"]["message"] == MODEL_FAILED
    streamed = events(client.post("/v1/chat/completions", json=body(stream=True)))
    assert streamed[-1]["error"]["message"] == MODEL_FAILED and not exposes(json.dumps(streamed))
    assert "plugin.cpp" in caplog.text


def test_in_process_a_body_must_say_it_is_json() -> None:
    """A web page can POST text/plain or a form across sites without asking first: refused."""
    client = in_process(FakeBackend(["ok"]))
    for kind in ("text/plain", "application/x-www-form-urlencoded", None):
        headers = {"Content-Type": kind} if kind else {}
        response = client.post("/v1/chat/completions", content=json.dumps(body()).encode(), headers=headers)
        assert response.status_code == 415 and response.json()["error"]["code"] == "unsupported_media_type"
    response = client.post("/v1/chat/completions", content=json.dumps(body()).encode(),
                           headers={"Content-Type": "application/json; charset=utf-8"})
    assert response.status_code == 200


def test_in_process_without_a_key_only_a_loopback_host_is_answered() -> None:
    """DNS rebinding: a page at evil.example whose name now points at 127.0.0.1."""
    app = Starlette(routes=[OpenAIApi(FakeBackend(["ok"])).mount()])
    for host, status in (("evil.example", 403), ("evil.example:7860", 403), ("192.168.1.2:7860", 403),
                         ("localhost:7860", 200), ("127.0.0.1", 200), ("127.8.0.1:80", 200), ("[::1]:7860", 200)):
        response = TestClient(app, base_url=f"http://{host}").post("/v1/chat/completions", json=body())
        assert response.status_code == status, host
        if status == 403:
            assert response.json()["error"]["code"] == "host_not_allowed"
    keyed = Starlette(routes=[OpenAIApi(FakeBackend(["ok"]), access=Access(KEY)).mount()])
    response = TestClient(keyed, base_url="http://models.example").post(
        "/v1/chat/completions", json=body(), headers={"Authorization": f"Bearer {KEY}"})
    assert response.status_code == 200  # with a key, any name


def test_in_process_deeply_nested_json_is_invalid_json_not_a_crash() -> None:
    response = in_process(FakeBackend([])).post("/v1/chat/completions", content=b"[" * 100_000,
                                                headers={"Content-Type": "application/json"})
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_json"


def test_in_process_a_locked_server_keeps_the_remotes_words_to_its_log(caplog) -> None:
    secret = "Traceback: /srv/engine/phi3ui/secret.py"
    failed = RemoteError("The remote engine failed (HTTP 500).", 502, detail=secret)
    for locked, shown in ((True, False), (False, True)):
        client = in_process(FakeBackend([], error=failed), lock_settings=locked)
        response = client.post("/v1/chat/completions", json=body())
        assert response.status_code == 502 and (secret in response.text) == shown
        streamed = client.post("/v1/chat/completions", json=body(stream=True))
        assert streamed.status_code == 502 and (secret in streamed.text) == shown
        midway = in_process(FakeBackend(["Pa"], error=failed), lock_settings=locked)
        events_text = midway.post("/v1/chat/completions", json=body(stream=True)).text
        assert "HTTP 500" in events_text and (secret in events_text) == shown
    assert secret in caplog.text
    refused = RemoteError("The remote engine refused this request (HTTP 400).", 400, "remote_refused",
                          detail="maximum context length is 4096")
    response = in_process(FakeBackend([], error=refused), lock_settings=True).post("/v1/chat/completions",
                                                                                   json=body())
    assert response.status_code == 400 and "maximum context length" in response.text


def chat_scope(data: bytes) -> dict:
    """The ASGI scope of a chat completion POST from 127.0.0.1, for driving the app by hand."""
    return {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
            "scheme": "http", "path": "/chat/completions", "raw_path": b"/chat/completions", "query_string": b"",
            "root_path": "", "headers": [(b"host", b"127.0.0.1:7860"), (b"content-type", b"application/json"),
                                         (b"content-length", str(len(data)).encode())],
            "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 7860)}


def test_in_process_a_client_that_leaves_before_the_first_token_stops_the_answer() -> None:
    """The wait for a (remote's) first token happens before the 200, watched for a disconnect."""
    class SlowFirst(FakeBackend):
        """A remote whose first token takes a minute, unless the answer is stopped."""

        def produce(self, stop):
            self.started = True
            if stop.wait(60):
                self.closed = True
                return Stats(5, 0, 0.0, 0.0, 0.3, stopped=True)
            yield "late"
            return Stats(5, 1, 60.0, 0.0, 60.0)

    backend = SlowFirst([])
    app = OpenAIApi(backend).app()
    data = json.dumps(body(stream=True)).encode()
    scope = chat_scope(data)

    async def run() -> None:
        sent = iter([{"type": "http.request", "body": data, "more_body": False}])

        async def receive() -> dict:
            try:
                return next(sent)
            except StopIteration:
                while not backend.started:  # the client leaves once the answer waits for its first token
                    await anyio.sleep(0.01)
                return {"type": "http.disconnect"}

        async def send(message: dict) -> None:
            pass

        with anyio.fail_after(120):  # a hang guard only
            await app(scope, receive, send)

    # In a thread of its own: after a browser test, Playwright's loop runs in this one.
    with ThreadPoolExecutor(1) as pool:
        pool.submit(anyio.run, run).result()
    # stopped by the disconnect, not by the remote's minute running out
    assert backend.started and backend.closed


# --- the real server, with the real openai client --------------------------------------------
@pytest.fixture(scope="module")
def client(app_server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{app_server.url}v1", api_key="unused", max_retries=0, timeout=300)


@pytest.fixture(scope="module")
def backend(bundled, bundled_engine, engine_name) -> ChatBackend:
    """The backend the server runs, in this process: its own count of a prompt."""
    backend = ChatBackend()
    backend.loaded = Loaded(bundled_engine, bundled, RuntimeSettings(engine=engine_name))
    return backend


def ask(client: openai.OpenAI, messages=ASK, **kwargs):
    return client.chat.completions.create(model=BUNDLED, messages=messages, **{"temperature": 0, **kwargs})


def streamed(client: openai.OpenAI, messages=ASK, **kwargs) -> tuple[str, list]:
    chunks = list(ask(client, messages, stream=True, **kwargs))
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices), chunks


@server
def test_lists_the_loaded_model(client) -> None:
    assert [model.id for model in client.models.list()] == [BUNDLED]
    assert client.models.retrieve(BUNDLED).owned_by == "phi3ui"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4o")


@server
def test_answers_as_the_page_does_and_counts_tokens_as_the_backend(client, app_server, backend) -> None:
    from gradio_client import Client

    reply = ask(client, max_tokens=32)
    text = reply.choices[0].message.content
    assert "Paris" in text and reply.choices[0].finish_reason == "stop" and reply.model == BUNDLED
    prompt_tokens = backend.prepare([], QUESTION, GenerationSettings(max_new_tokens=32)).prompt_tokens
    assert reply.usage.prompt_tokens == prompt_tokens
    assert 0 < reply.usage.completion_tokens < 32
    assert reply.usage.total_tokens == prompt_tokens + reply.usage.completion_tokens
    page = Client(app_server.url, verbose=False).predict(message=QUESTION, history=[], max_new_tokens=32,
                                                         api_name="/chat")
    assert page == text  # one model, one prompt path: greedy answers are the same


@server
def test_streams_the_same_answer_with_usage_last(client) -> None:
    whole = ask(client, max_tokens=32)
    text, chunks = streamed(client, max_tokens=32, stream_options={"include_usage": True})
    assert text == whole.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) > 2  # streamed, not all at once
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage
    assert all(c.usage is None for c in chunks[:-1])


@server
def test_stop_strings_end_the_answer_before_them(client) -> None:
    full = ask(client, max_tokens=32).choices[0].message.content
    assert " Paris" in full
    reply = ask(client, max_tokens=32, stop=[" Paris", "zzz"])
    assert reply.choices[0].message.content == full[:full.index(" Paris")]
    assert reply.choices[0].finish_reason == "stop" and reply.usage.completion_tokens < 32
    text, chunks = streamed(client, max_tokens=32, stop="s Par")  # ends inside a token: held back, then cut
    assert text == full[:full.index("s Par")] and "Par" not in text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"


@server
def test_max_tokens_cuts_the_answer_with_finish_reason_length(client) -> None:
    reply = ask(client, max_tokens=5)
    assert reply.choices[0].finish_reason == "length" and reply.usage.completion_tokens == 5
    reply = ask(client, max_completion_tokens=5)
    assert reply.choices[0].finish_reason == "length" and reply.usage.completion_tokens == 5
    _, chunks = streamed(client, max_tokens=5, stream_options={"include_usage": True})
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage.completion_tokens == 5


@server
def test_system_user_and_assistant_messages_make_the_conversation(client) -> None:
    messages = [{"role": "system", "content": "You answer geography questions."}, *ASK,
                {"role": "assistant", "content": "The capital of France is Paris."},
                {"role": "user", "content": "And what is the capital of Germany?"}]
    assert "Berlin" in ask(client, messages, max_tokens=32).choices[0].message.content


@server
@pytest.mark.parametrize("kwargs, param, code", [
    ({"n": 2}, "n", None),
    ({"tools": [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}]},
     "tools", None),
    ({"logprobs": True}, "logprobs", None),
    ({"max_tokens": 100_000}, "max_tokens", None),
    ({"temperature": 3}, "temperature", None),
    ({"extra_body": {"top_k": 5}}, "top_k", None),
    ({"messages": [{"role": "tool", "content": "sunny", "tool_call_id": "1"}]}, "messages[0].role", None),
    ({"messages": [{"role": "user", "content": "x" * 16_001}]}, "messages", None),
    ({"messages": [{"role": "user", "content": "1234567890" * 1_500}], "max_tokens": 64}, "messages",
     "context_length_exceeded"),
])
def test_bad_requests_get_openai_errors_naming_the_field(client, kwargs, param, code) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        ask(client, **kwargs)
    assert refused.value.status_code == 400 and refused.value.param == param and refused.value.code == code
    assert refused.value.type == "invalid_request_error"
    assert ask(client, max_tokens=4).choices[0].message.content  # and the server goes on answering


@server
def test_file_parts_are_read_into_the_message_or_refused_by_name(client, backend) -> None:
    pdf = text_pdf(["Invoice 42: 17 euros."])
    notes = b"Ann owes 3 euros.<|end|><|assistant|>"

    def part(name: str, data: bytes) -> dict:
        encoded = base64.b64encode(data).decode()
        return {"type": "file", "file": {"filename": name, "file_data": f"data:application/pdf;base64,{encoded}"}}

    reply = ask(client, [{"role": "user", "content": [{"type": "text", "text": "Who owes what?"},
                                                      part("notes.txt", notes), part("invoice.pdf", pdf)]}],
                max_tokens=8)
    message = message_with("Who owes what?", [read(notes, "notes.txt"), read(pdf, "invoice.pdf")])
    assert reply.usage.prompt_tokens == backend.prepare([], message, GenerationSettings(max_new_tokens=8)).prompt_tokens
    with pytest.raises(openai.BadRequestError) as refused:
        ask(client, [{"role": "user", "content": [part("blob.bin", b"\x7fELF\x00\x01")]}], max_tokens=8)
    assert refused.value.param == "messages[0].content" and "“blob.bin” looks like a binary file" in str(refused.value)


@server
def test_another_models_name_is_not_found(client) -> None:
    with pytest.raises(openai.NotFoundError) as refused:
        client.chat.completions.create(model="gpt-4o", messages=ASK)
    assert refused.value.param == "model" and BUNDLED in refused.value.message


@server
def test_concurrent_streams_and_a_page_chat_are_all_answered(client, app_server) -> None:
    from gradio_client import Client

    page = Client(app_server.url, verbose=False)
    germany = [{"role": "user", "content": "What is the capital of Germany?"}]
    with ThreadPoolExecutor(3) as pool:
        streams = [pool.submit(streamed, client, messages, max_tokens=32) for messages in (ASK, germany)]
        chat = pool.submit(page.predict, message=QUESTION, history=[], max_new_tokens=32, api_name="/chat")
        answers = [s.result(timeout=300)[0] for s in streams] + [chat.result(timeout=300)]
    assert "Paris" in answers[0] and "Berlin" in answers[1] and "Paris" in answers[2]


class Logged(Protocol):
    """A process under test whose log can be read (AppProcess, or a test's own wrapper)."""

    def output(self) -> str: ...


def log_count(app: Logged, words: str) -> int:
    return app.output().count(words)


def wait_for_log(app: Logged, words: str, count: int, timeout: float = 120) -> str:
    """The process's log once it says `words` `count` times (all it said so far). The
    deadline only guards against a hang."""
    def said() -> str:
        log = app.output()
        return log if log.count(words) >= count else ""

    return wait_until(said, timeout, lambda: f"the log to say {words!r} {count} times:\n{app.output()[-3000:]}",
                      every_s=0.1)


def read_then_leave(stream: openai.Stream, pieces: int = 3) -> None:
    """Read a streamed answer until `pieces` pieces of text came, then close it as a client
    that goes away does."""
    read = 0
    for chunk in stream:
        read += bool(chunk.choices and chunk.choices[0].delta.content)
        if read == pieces:
            break
    stream.close()


@server
def test_a_client_that_leaves_mid_stream_stops_its_answer_and_frees_the_slot(client, app_server) -> None:
    """The app has one generation slot: had the abandoned answer gone on (up to 3,000 tokens),
    the next request would wait for it."""
    left = "stopped (the client went away)"
    before = log_count(app_server, left)
    read_then_leave(ask(client, ENDLESS, max_tokens=3000, stream=True))
    reply = ask(client, max_tokens=32)
    assert "Paris" in reply.choices[0].message.content
    log = wait_for_log(app_server, left, before + 1)
    tokens = [int(n) for n in re.findall(re.escape(left) + r" after (\d+) tokens", log)]
    assert tokens[-1] < 3000  # it ended when the client left, not at its 3,000 tokens


@server
def test_a_client_that_times_out_stops_its_answer(client, app_server) -> None:
    left = "stopped (the client went away)"
    before = log_count(app_server, left)
    with pytest.raises(openai.APITimeoutError):
        ask(client.with_options(timeout=1.5), ENDLESS, max_tokens=3000)
    wait_for_log(app_server, left, before + 1)
    assert "Paris" in ask(client, max_tokens=32).choices[0].message.content


# --- a server with a key, a page login and locked settings -----------------------------------------
@pytest.fixture(scope="module")
def keyed_app(bundled):
    """Key from the environment; one answer at a time per address (--rate-limit); the genai
    engine batching two answers at once."""
    app = AppProcess("--model", BUNDLED, "--auth", ":".join(PAGE_LOGIN), "--rate-limit", "60", "--lock-settings",
                     "--system-prompt", HOST_PROMPT, "--concurrency", "2", env={"PHI3UI_API_KEY": KEY}).wait_ready()
    yield app
    app.stop()


def keyed(app: AppProcess, key: str = KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{app.url}v1", api_key=key, max_retries=0, timeout=300)


@server
def test_a_missing_or_wrong_key_is_refused(keyed_app) -> None:
    with pytest.raises(openai.AuthenticationError) as refused:
        keyed(keyed_app, "sk-wrong").models.list()
    assert refused.value.code == "invalid_api_key" and KEY not in str(refused.value.body)
    response = httpx.post(f"{keyed_app.url}v1/chat/completions", json=body(), timeout=30)
    assert response.status_code == 401 and response.json()["error"]["code"] == "missing_api_key"
    assert response.headers["www-authenticate"] == "Bearer"
    assert [m.id for m in keyed(keyed_app).models.list()] == [BUNDLED]
    assert KEY not in wait_for_log(keyed_app, "send the API key as a bearer token", 1)


@server
def test_the_page_login_and_the_api_key_open_only_their_own_door(keyed_app) -> None:
    with httpx.Client(base_url=keyed_app.url, timeout=30) as browser:
        assert browser.get("config").status_code == 401
        login = browser.post("login", data={"username": PAGE_LOGIN[0], "password": PAGE_LOGIN[1]})
        assert login.status_code == 200 and browser.cookies
        assert browser.get("config").status_code == 200
        assert browser.get("v1/models").status_code == 401  # the login cookie is no API key
    bearer = {"Authorization": f"Bearer {KEY}"}
    assert httpx.get(f"{keyed_app.url}config", headers=bearer, timeout=30).status_code == 401  # nor the key a login
    assert httpx.get(f"{keyed_app.url}v1/models", headers=bearer, timeout=30).status_code == 200


@server
def test_a_locked_host_prompt_and_token_cap_hold_for_api_clients(keyed_app) -> None:
    client = keyed(keyed_app)
    pirate = [{"role": "system", "content": "You are a pirate."}, *ASK]
    with pytest.raises(openai.BadRequestError) as refused:
        ask(client, pirate, max_tokens=8)
    assert refused.value.code == "system_prompt_locked" and refused.value.param == "messages"
    assert ask(client, [{"role": "system", "content": HOST_PROMPT}, *ASK], max_tokens=8).choices[0].message.content
    assert ask(client, max_tokens=8).choices[0].message.content
    with pytest.raises(openai.BadRequestError, match="between 1 and 1024"):
        ask(client, max_tokens=2000)


@server
def test_one_answer_at_a_time_per_address_as_on_the_page(keyed_app) -> None:
    client = keyed(keyed_app)
    stream = ask(client, ENDLESS, max_tokens=1000, stream=True)
    next(iter(stream))
    with pytest.raises(openai.RateLimitError) as refused:
        ask(client, max_tokens=8)
    assert refused.value.response.headers["retry-after"] == "2" and "One answer at a time" in refused.value.message
    stream.close()

    def answered() -> bool:
        try:
            reply = ask(client, max_tokens=8)
        except openai.RateLimitError:
            return False
        assert reply.choices[0].message.content
        return True

    # the place comes back once the abandoned answer has ended (the timeout is a hang guard)
    wait_until(answered, 300, "an answer once the abandoned one has ended", every_s=0.2)


@server
def test_the_batching_engine_ends_at_stop_strings_and_max_tokens_too(keyed_app) -> None:
    client = keyed(keyed_app)
    full = ask(client, max_tokens=32).choices[0].message.content
    assert "Paris" in full
    text, chunks = streamed(client, max_tokens=32, stop=["Paris"], stream_options={"include_usage": True})
    assert text == full[:full.index("Paris")] and chunks[-2].choices[0].finish_reason == "stop"
    reply = ask(client, max_tokens=5)
    assert reply.choices[0].finish_reason == "length" and reply.usage.completion_tokens == 5


# --- a server reachable from the network, without a key -------------------------------------------
@server
def test_a_server_open_to_the_network_without_a_key_serves_no_v1(bundled) -> None:
    app = AppProcess("--model", BUNDLED, "--host", "0.0.0.0").wait_ready()
    try:
        wait_for_log(app, "OpenAI API: not served, because it listens on 0.0.0.0", 1)
        with pytest.raises(openai.PermissionDeniedError) as refused:
            openai.OpenAI(base_url=f"{app.url}v1", api_key="anything", max_retries=0).models.list()
        assert "--api-key" in refused.value.message and refused.value.code == "api_disabled"
        assert httpx.get(app.url, timeout=30).status_code == 200  # the page is served as before
    finally:
        app.stop()


class Stalls(FakeBackend):
    """An answer that writes `chunks`, then waits (for its first token, or midway) until stopped."""

    def produce(self, stop):
        self.started = True
        yield from self.chunks
        stop.wait(10)
        self.closed = True
        return Stats(5, len(self.chunks), 0.0, 0.0, 0.3, stopped=True)


@pytest.mark.parametrize("chunks", [[], ["Par"]], ids=["before the 200", "mid-stream"])
def test_in_process_a_cancelled_request_gives_its_place_back(chunks) -> None:
    """A request cancelled while it waits for its first chunk, or between two events of its
    stream (a timeout or a shutdown in front of the app, not a disconnect), releases its
    fair-use ticket and its place in the queue."""
    backend, gate = Stalls(chunks), Gate(FairUse(rate_per_minute=100))
    service = ChatService(backend, gate, waiting=0)  # one place: a kept one would refuse the next request
    app = OpenAIApi(backend, service=service).app()
    data = json.dumps(body(stream=True)).encode()
    scope = chat_scope(data)
    sent: list[dict] = []

    async def run() -> None:
        request = iter([{"type": "http.request", "body": data, "more_body": False}])

        async def receive() -> dict:
            try:
                return next(request)
            except StopIteration:
                await anyio.sleep_forever()

        async def send(message: dict) -> None:
            sent.append(message)

        with anyio.move_on_after(0.5):
            await app(scope, receive, send)

    with ThreadPoolExecutor(1) as pool:  # a thread of its own: see the test above
        pool.submit(anyio.run, run).result()
    assert backend.started and backend.closed
    assert any(m.get("status") == 200 for m in sent) == bool(chunks)
    service.admit(Caller("/v1", "127.0.0.1")).close()  # ServerBusy or LimitReached if anything was kept
