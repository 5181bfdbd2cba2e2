"""`--engine openai`: phi3ui as a front end to a remote OpenAI-compatible server.

Fast tests first (no server): the request a conversation becomes, the stream parsed (from a
stream recorded from a real phi3ui server: tests/data/phi3ui_stream.sse), errors mapped to
the user's sentences, the token estimate, and a remote that is down (a real refused
connection). Then real processes: an engine (`python app.py --model bundled`) and a front
end (`python app.py --engine openai --api-base <engine>/v1`), driven with gradio_client,
the `openai` client and headless Chromium; Stop through the front end ends the engine's
generation; the engine killed mid-answer and started again on the same port.
"""

from __future__ import annotations

import re
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from gradio_client import Client
from playwright.sync_api import Page, expect

from bench.app_process import AppProcess, free_port
from phi3ui.chat import ChatBackend
from phi3ui.remote_engine import (
    MessagesPrompt,
    RemoteError,
    Tally,
    TokenEstimate,
    chat_body,
    events,
    http_failure,
    transport_failure,
)
from phi3ui.server import parse_args
from phi3ui.settings import BUNDLED, GenerationSettings, RemoteSettings, RuntimeSettings, SettingsError
from tests.test_browser import (  # noqa: F401 - browser, open_page and page are fixtures
    ANSWER, NOTE, browser, open_page, page, send, wait_growing, wait_idle)

QUESTION = "What is the capital of France?"
ASK = [{"role": "user", "content": QUESTION}]
ENDLESS = [{"role": "user", "content": "Count from 1 to 1000, one number per line."}]
RECORDED = Path(__file__).parent / "data" / "phi3ui_stream.sse"
LEFT = "/v1 answer stopped (the client went away)"


# --- without a server --------------------------------------------------------------------------
def test_a_conversation_goes_out_as_messages_with_openais_fields() -> None:
    prompt = MessagesPrompt.of([{"role": "system", "content": "Be brief."}, *ASK])
    greedy = chat_body(prompt, GenerationSettings(max_new_tokens=32, stop=("\n\n",), top_k=7, seed=3), "bundled")
    assert greedy == {"model": "bundled", "messages": [{"role": "system", "content": "Be brief."}, *ASK],
                      "stream": True, "stream_options": {"include_usage": True}, "max_tokens": 32,
                      "temperature": 0.0, "stop": ["\n\n"]}
    sampled = chat_body(prompt, GenerationSettings(temperature=0.7, top_p=0.9, seed=5), "m")
    assert (sampled["temperature"], sampled["top_p"], sampled["seed"]) == (0.7, 0.9, 5)
    assert "top_k" not in sampled and "repetition_penalty" not in sampled  # not OpenAI's fields


def test_the_inspector_shows_the_messages_as_sent() -> None:
    prompt = MessagesPrompt.of([{"role": "user", "content": "Hi <|end|>"}])
    assert "⟦user⟧\nHi <|end|>" in prompt.shown()
    assert "remote engine" in prompt.shown()
    assert prompt.text == '[{"role": "user", "content": "Hi <|end|>"}]'


def test_a_recorded_stream_gives_its_text_finish_reason_and_usage() -> None:
    """A stream recorded from a real phi3ui server's /v1 (see the file's comment lines)."""
    tally = Tally()
    text = "".join(tally.feed(event) for event in events(RECORDED.read_text().splitlines()))
    assert text == "The capital of France is Paris, "
    assert tally.finish == "stop"
    assert tally.usage == {"prompt_tokens": 37, "completion_tokens": 9, "total_tokens": 46}


def test_an_error_event_midway_is_a_remote_error() -> None:
    lines = ['data: {"choices":[{"delta":{"content":"Pa"}}]}', "",
             'data: {"error":{"message":"out of memory","type":"server_error"}}']
    tally = Tally()
    with pytest.raises(RemoteError, match="out of memory") as failed:
        for event in events(lines):
            tally.feed(event)
    assert failed.value.status == 502


@pytest.mark.parametrize("status, body, front, code, words", [
    (401, '{"error":{"message":"Incorrect API key."}}', 502, "remote_unauthorized", "--remote-api-key"),
    (404, '{"error":{"message":"The model `x` does not exist here"}}', 502, "remote_model_not_found",
     "--remote-model"),
    (400, '{"error":{"message":"max_tokens too large"}}', 400, "remote_refused", "max_tokens too large"),
    (429, "slow down", 503, "remote_busy", "busy"),
    (500, "<html>Internal Server Error</html>", 502, "remote_failed", "HTTP 500"),
    (503, '{"detail":"loading"}', 503, "remote_busy", "loading"),
])
def test_http_errors_become_sentences_and_the_front_ends_status(status, body, front, code, words) -> None:
    error = http_failure(status, body, "x")
    assert (error.status, error.code) == (front, code)
    assert words in str(error)


def test_transport_failures_say_down_slow_or_cut() -> None:
    request = httpx.Request("POST", "http://127.0.0.1:1/v1/chat/completions")
    assert transport_failure(httpx.ConnectError("refused", request=request), 60).status == 503
    slow = transport_failure(httpx.ReadTimeout("slow", request=request), 7)
    assert slow.status == 504 and "7 s (--remote-timeout)" in str(slow)
    cut = transport_failure(httpx.RemoteProtocolError("peer closed", request=request), 60, midway=True)
    assert cut.status == 502 and "middle of the answer" in str(cut)


def test_the_token_estimate_is_generous_and_only_learns_upwards() -> None:
    estimate = TokenEstimate()
    prompt = MessagesPrompt.of([{"role": "user", "content": "x" * 600}])
    assert estimate.count(prompt) == 200 + 5 + 3
    estimate.learn(prompt, 100)  # the remote counted fewer: the estimate stays on the safe side
    assert estimate.count(prompt) == 208
    estimate.learn(prompt, 608)  # denser than thought (one token a character)
    assert estimate.count(prompt) == 608
    estimate.learn(MessagesPrompt.of([{"role": "user", "content": "Hi"}]), 50)  # too short to teach anything
    assert estimate.count(prompt) == 608


def test_the_command_line_needs_a_url_and_keeps_the_two_keys_apart() -> None:
    with pytest.raises(SystemExit):
        parse_args(["--engine", "openai"])
    with pytest.raises(SystemExit):
        parse_args(["--api-base", "http://127.0.0.1:8000/v3"])
    args = parse_args(["--engine", "openai", "--api-base", "http://h:8000/v3", "--remote-api-key", "r",
                       "--api-key", "mine", "--remote-model", "m", "--remote-timeout", "9"])
    assert (args.api_base, args.remote_api_key, args.api_key, args.remote_model, args.remote_timeout) == \
        ("http://h:8000/v3", "r", "mine", "m", 9.0)
    with pytest.raises(SettingsError, match="http"):
        RuntimeSettings(engine="openai", remote=RemoteSettings("127.0.0.1:8000")).validate()
    with pytest.raises(SettingsError, match="Prompt lookup"):
        RuntimeSettings(engine="openai", remote=RemoteSettings("http://h/v1"), prompt_lookup=True).validate()


def test_a_remote_that_is_down_starts_with_a_notice_and_each_answer_says_so() -> None:
    """A real refused connection: nothing listens on the port."""
    backend = ChatBackend()
    remote = RemoteSettings(f"http://127.0.0.1:{free_port()}/v1", model="bundled", timeout_s=5)
    loaded = backend.load("ignored", runtime=RuntimeSettings(engine="openai", remote=remote))
    assert any("could not be asked" in n for n in loaded.notices)
    assert any("assuming 4096" in n for n in loaded.notices)
    assert "remote OpenAI-compatible engine" in loaded.describe()
    answer = backend.reply([], QUESTION, GenerationSettings(max_new_tokens=8))
    with pytest.raises(RemoteError, match="cannot be reached") as failed:
        answer.text()
    assert failed.value.status == 503
    with pytest.raises(SettingsError, match="front end to a remote engine"):
        backend.load(BUNDLED)  # nothing is exported or loaded on a front end
    backend.engine.close()


def test_a_remote_that_never_answers_times_out_with_a_message() -> None:
    """A real listening socket that takes the connection and never answers."""
    with socket.create_server(("127.0.0.1", 0)) as silent:
        port = silent.getsockname()[1]
        backend = ChatBackend()
        remote = RemoteSettings(f"http://127.0.0.1:{port}/v1", model="m", timeout_s=0.5)
        loaded = backend.load("ignored", runtime=RuntimeSettings(engine="openai", remote=remote))
        assert any("--remote-timeout" in n for n in loaded.notices)
        started = time.monotonic()
        with pytest.raises(RemoteError, match="sent nothing for 0.5 s") as failed:
            backend.reply([], QUESTION, GenerationSettings(max_new_tokens=8)).text()
        assert failed.value.status == 504 and time.monotonic() - started < 5
        backend.engine.close()


# --- an engine process and a front end in front of it ------------------------------------------
class Engine:
    """The engine process, which a test may kill and start again on the same port."""

    def __init__(self) -> None:
        self.app = AppProcess("--model", BUNDLED).wait_ready()
        self.port = self.app.port
        self.logs: list[str] = []

    def output(self) -> str:
        return "".join(self.logs) + self.app.output()

    def kill(self) -> None:
        self.app.process.send_signal(signal.SIGKILL)
        self.app.process.wait()
        self.logs.append(self.app.output())

    def restart(self) -> None:
        """On the same port: the last --port on the command line wins."""
        app = AppProcess("--model", BUNDLED, "--port", str(self.port))
        app.port, app.url = self.port, f"http://127.0.0.1:{self.port}/"
        self.app = app.wait_ready()

    def stop(self) -> None:
        if self.app.process.poll() is None:
            self.app.stop()


@pytest.fixture(scope="module")
def engine(bundled) -> Iterator[Engine]:
    engine = Engine()
    yield engine
    engine.stop()


@pytest.fixture(scope="module")
def front(engine: Engine) -> Iterator[AppProcess]:
    app = AppProcess("--engine", "openai", "--api-base", f"http://127.0.0.1:{engine.port}/v1",
                     "--remote-timeout", "30").wait_ready()
    yield app
    app.stop()


@pytest.fixture(scope="module")
def browser_app(front: AppProcess) -> AppProcess:
    """What tests.test_browser's page fixtures open: the front end."""
    return front


def chat(url: str, question: str = QUESTION, tokens: int = 32) -> str:
    return Client(url, verbose=False).predict(message=question, history=[], max_new_tokens=tokens, temperature=0,
                                              api_name="/chat")


def api(app: AppProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{app.url}v1", api_key="unused", max_retries=0, timeout=120)


def wait_for_log(output, words: str, count: int, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while output().count(words) < count and time.monotonic() < deadline:
        time.sleep(0.1)
    assert output().count(words) >= count, f"the log never said {words!r}:\n{output()[-3000:]}"
    return output()


@pytest.mark.server
def test_the_front_end_answers_as_the_engine_itself(engine: Engine, front: AppProcess) -> None:
    own = chat(engine.app.url)
    through = chat(front.url)
    assert "Paris" in through
    assert through == own


@pytest.mark.server
def test_the_openai_client_through_the_front_end(engine: Engine, front: AppProcess) -> None:
    client, direct = api(front), api(engine.app)
    assert [m.id for m in client.models.list().data] == ["bundled"]
    assert client.models.list().data[0].model_extra["context_window"] == 8192  # the engine's, passed on
    reply = client.chat.completions.create(model="bundled", messages=ASK, temperature=0, max_tokens=32)
    own = direct.chat.completions.create(model="bundled", messages=ASK, temperature=0, max_tokens=32)
    assert reply.choices[0].message.content == own.choices[0].message.content
    assert "Paris" in reply.choices[0].message.content
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == \
        (own.usage.prompt_tokens, own.usage.completion_tokens)
    chunks = list(client.chat.completions.create(model="bundled", messages=ASK, temperature=0, max_tokens=32,
                                                 stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == own.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == own.usage.completion_tokens
    short = client.chat.completions.create(model="bundled", messages=ENDLESS, temperature=0, max_tokens=5)
    assert short.choices[0].finish_reason == "length" and short.usage.completion_tokens == 5
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="another", messages=ASK, max_tokens=5)


@pytest.mark.server
def test_stop_through_the_front_end_ends_the_engines_generation(engine: Engine, front: AppProcess) -> None:
    before = engine.output().count(LEFT)
    stream = api(front).chat.completions.create(model="bundled", messages=ENDLESS, temperature=0, max_tokens=3000,
                                                stream=True)
    read = 0
    for chunk in stream:
        read += bool(chunk.choices and chunk.choices[0].delta.content)
        if read == 3:
            break
    stream.close()
    log = wait_for_log(engine.output, LEFT, before + 1)
    assert int(re.findall(re.escape(LEFT) + r" after (\d+) tokens", log)[-1]) < 3000
    # gradio_client's cancel closes the page's answer, which closes the engine's stream.
    job = Client(front.url, verbose=False).submit(message=ENDLESS[0]["content"], history=[], max_new_tokens=3000,
                                                  temperature=0, api_name="/chat")
    for i, _ in enumerate(job):
        if i == 3:
            break
    job.cancel()
    log = wait_for_log(engine.output, LEFT, before + 2)
    assert int(re.findall(re.escape(LEFT) + r" after (\d+) tokens", log)[-1]) < 3000


@pytest.mark.server
def test_a_wrong_key_or_model_is_named_and_the_right_ones_work(engine: Engine, bundled) -> None:
    """The remote's own 401 and 404, through the backend a front end runs."""
    keyed = AppProcess("--model", BUNDLED, env={"PHI3UI_API_KEY": "sk-engine-5e1"}).wait_ready()
    try:
        def backend(url: str, key: str | None = None, model: str = "") -> ChatBackend:
            chat_backend = ChatBackend()
            chat_backend.load("ignored", runtime=RuntimeSettings(
                engine="openai", remote=RemoteSettings(f"{url}v1", key, model, timeout_s=30)))
            return chat_backend

        greedy = GenerationSettings(max_new_tokens=32)
        wrong = backend(keyed.url, "sk-wrong", model=BUNDLED)
        assert any("refused this server's key" in n for n in wrong.loaded.notices)
        with pytest.raises(RemoteError, match="--remote-api-key") as refused:
            wrong.reply([], QUESTION, greedy).text()
        assert refused.value.code == "remote_unauthorized"
        assert "Paris" in backend(keyed.url, "sk-engine-5e1").reply([], QUESTION, greedy).text()
        with pytest.raises(RemoteError, match="--remote-model") as missing:
            backend(engine.app.url, model="no-such-model").reply([], QUESTION, greedy).text()
        assert missing.value.code == "remote_model_not_found"
    finally:
        keyed.stop()


@pytest.mark.server
@pytest.mark.browser
def test_the_page_hides_export_and_device_and_answers(page: Page) -> None:
    expect(page.locator("#model-info")).to_contain_text("remote OpenAI-compatible engine")
    expect(page.locator("#export-button")).to_have_count(0)  # the export and device settings are not drawn
    expect(page.get_by_label("Device")).to_have_count(0)
    send(page, QUESTION)
    wait_idle(page)
    expect(page.locator(ANSWER).last).to_contain_text("Paris")
    expect(page.locator(NOTE).last).to_contain_text("answer tokens")


@pytest.mark.server
@pytest.mark.browser
def test_stop_in_the_page_ends_the_engines_generation(page: Page, engine: Engine) -> None:
    before = engine.output().count(LEFT)
    send(page, ENDLESS[0]["content"])
    wait_growing(page, 20)
    page.locator("#stop").click()
    wait_idle(page)
    expect(page.locator(NOTE).last).to_contain_text("Stopped")
    log = wait_for_log(engine.output, LEFT, before + 1)
    assert int(re.findall(re.escape(LEFT) + r" after (\d+) tokens", log)[-1]) < 1024


@pytest.mark.server
def test_a_killed_engine_is_a_clear_error_and_its_restart_is_used_at_once(engine: Engine, front: AppProcess) -> None:
    """Last in this file: it kills the engine (and starts it again)."""
    client = api(front)
    stream = client.chat.completions.create(model="bundled", messages=ENDLESS, temperature=0, max_tokens=3000,
                                            stream=True)
    read = 0
    with pytest.raises(openai.APIError, match="closed the connection in the middle of the answer"):
        for chunk in stream:
            read += bool(chunk.choices and chunk.choices[0].delta.content)
            if read == 3:
                engine.kill()
    with pytest.raises(openai.InternalServerError, match="cannot be reached") as down:
        client.chat.completions.create(model="bundled", messages=ASK, max_tokens=8)
    assert down.value.status_code == 503
    with pytest.raises(openai.InternalServerError, match="cannot be reached"):  # before the 200 of a stream
        client.chat.completions.create(model="bundled", messages=ASK, max_tokens=8, stream=True)
    with pytest.raises(Exception, match="cannot be reached"):
        chat(front.url)
    engine.restart()
    assert "Paris" in chat(front.url)
    assert "Paris" in client.chat.completions.create(model="bundled", messages=ASK, temperature=0,
                                                     max_tokens=32).choices[0].message.content
