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

import dataclasses
import json
import re
import select
import signal
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import jsonschema
import openai
import pytest
from gradio_client import Client
from playwright.sync_api import Page, expect

from tests.app_process import AppProcess, free_port
from tests.browsing import model_info
from tests.json_cases import PROMPTS, SCHEMAS, instruction
from phi3ui.chat import ChatBackend
from phi3ui.errors import public_error
from phi3ui.openai_wire import Tally, chat_body, events
from phi3ui.remote_engine import (
    MessagesPrompt,
    RemoteError,
    TokenEstimate,
    http_failure,
    transport_failure,
)
from phi3ui.server import parse_args
from phi3ui.settings import BUNDLED, GenerationSettings, Limits, RemoteSettings, RuntimeSettings, SettingsError
from tests.test_browser import (  # noqa: F401 - open_page and page are fixtures
    ANSWER, NOTE, open_page, page, send, set_max_new_tokens, wait_growing, wait_idle)
from tests.test_openai_api import read_then_leave, wait_for_log

QUESTION = "What is the capital of France?"
ASK = [{"role": "user", "content": QUESTION}]
ENDLESS = [{"role": "user", "content": "Count from 1 to 1000, one number per line."}]
RECORDED = Path(__file__).parent / "data" / "phi3ui_stream.sse"
LEFT = "/v1 answer stopped (the client went away)"


# --- without a server --------------------------------------------------------------------------
def test_a_conversation_goes_out_as_messages_with_openais_fields() -> None:
    prompt = MessagesPrompt.of([{"role": "system", "content": "Be brief."}, *ASK])
    greedy = chat_body(prompt.as_json(), GenerationSettings(max_new_tokens=32, stop=("\n\n",), top_k=7, seed=3), "bundled")
    assert greedy == {"model": "bundled", "messages": [{"role": "system", "content": "Be brief."}, *ASK],
                      "stream": True, "stream_options": {"include_usage": True}, "max_tokens": 32,
                      "temperature": 0.0, "stop": ["\n\n"]}
    sampled = chat_body(prompt.as_json(), GenerationSettings(temperature=0.7, top_p=0.9, seed=5), "m")
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


def test_the_token_estimate_is_generous_and_fixed() -> None:
    """No learning from the remote's counts: a changing rate would change the window's cached
    counts and its cut, and replicas would each learn their own (so make different cuts)."""
    estimate = TokenEstimate()
    prompt = MessagesPrompt.of([{"role": "user", "content": "x" * 600}])
    assert estimate.count(prompt) == 200 + 5 + 3
    assert not hasattr(estimate, "learn")
    with pytest.raises(dataclasses.FrozenInstanceError):
        estimate.tokens_per_char = 1.0  # type: ignore[misc]


def test_the_remotes_own_words_reach_the_log_always_and_visitors_only_unlocked_or_for_a_400(caplog) -> None:
    failed = http_failure(500, '{"error":{"message":"Traceback in /srv/phi3ui/secret.py"}}', "x")
    assert "/srv/phi3ui/secret.py" in caplog.text  # the log
    assert "/srv/phi3ui/secret.py" in public_error(failed, locked=False)  # the host
    assert "/srv/phi3ui/secret.py" not in public_error(failed, locked=True)
    assert "HTTP 500" in public_error(failed, locked=True)
    refused = http_failure(400, '{"error":{"message":"This model\'s maximum context length is 4096"}}', "x")
    assert "maximum context length" in public_error(refused, locked=True)  # the visitor's to fix
    midway = Tally()
    with pytest.raises(RemoteError) as broke:
        midway.feed({"error": {"message": "out of memory at /srv/x.cpp"}})
    assert "/srv/x.cpp" not in public_error(broke.value, locked=True)
    assert "/srv/x.cpp" in public_error(broke.value, locked=False)


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
    with pytest.raises(SettingsError, match="user name or password"):  # it would show in the log and the page
        RuntimeSettings(engine="openai", remote=RemoteSettings("http://me:secret@h:8000/v1")).validate()


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
        with pytest.raises(RemoteError, match="sent nothing for 0.5 s") as failed:  # its own timeout, said
            backend.reply([], QUESTION, GenerationSettings(max_new_tokens=8)).text()
        assert failed.value.status == 504
        backend.engine.close()


# --- a small real OpenAI-compatible server, scripted --------------------------------------------
class Scripted:
    """A real HTTP server on loopback that answers /v1/models and streams chat completions as
    a test scripts them, and notes when its client goes away (a read of b"" on the socket)."""

    def __init__(self, models: list[dict] | None = None, pieces: tuple[str, ...] = ("Par", "is"),
                 delay: float = 0.05, head_delay: float = 0.0, usage: dict | None = None, fail_models: int = 0,
                 hold_after: str = ""):
        self.models, self.pieces, self.delay, self.head_delay = models, pieces, delay, head_delay
        self.usage, self.fail_models, self.hold_after = usage, fail_models, hold_after
        self.posted = threading.Event()  # a chat completion's request has been read
        self.gone = threading.Event()  # the client closed its connection before the answer's end
        self.sent = 0  # pieces written
        scripted = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                if scripted.fail_models > 0:
                    scripted.fail_models -= 1
                    self.reply(503, {"error": {"message": "loading"}})
                    return
                self.reply(200, {"object": "list", "data": scripted.models or [{"id": "m", "object": "model"}]})

            def reply(self, status: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def left(self, wait: float) -> bool:
                """Whether the client closed the connection within `wait` seconds."""
                readable, _, _ = select.select([self.connection], [], [], wait)
                return bool(readable) and self.connection.recv(1, socket.MSG_PEEK) == b""

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers["Content-Length"]))
                scripted.posted.set()
                if scripted.head_delay and self.left(scripted.head_delay):
                    scripted.gone.set()
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                try:
                    for piece in scripted.pieces:
                        event = {"choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]}
                        self.wfile.write(f"data: {json.dumps(event)}\n\n".encode())
                        self.wfile.flush()
                        scripted.sent += 1
                        # after `hold_after`, the next piece waits (a minute at most) for the client to leave
                        if self.left(60 if piece == scripted.hold_after else scripted.delay):
                            scripted.gone.set()
                            return
                    end = {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
                    self.wfile.write(f"data: {json.dumps(end)}\n\n".encode())
                    if scripted.usage is not None:
                        self.wfile.write(f"data: {json.dumps({'choices': [], 'usage': scripted.usage})}\n\n".encode())
                    self.wfile.write(b"data: [DONE]\n\n")
                except OSError:
                    scripted.gone.set()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        # Polled every 50 ms rather than 500: `close` waits for the next poll, at every test's end.
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def backend(self, model: str = "m", limits: Limits | None = None, timeout_s: float = 10) -> ChatBackend:
        backend = ChatBackend(limits=limits or Limits())
        backend.load("ignored", runtime=RuntimeSettings(engine="openai", remote=RemoteSettings(self.url, model=model,
                                                                                               timeout_s=timeout_s)))
        return backend

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def scripted() -> Iterator[Callable[..., Scripted]]:
    made: list[Scripted] = []

    def make(**kwargs) -> Scripted:
        made.append(Scripted(**kwargs))
        return made[-1]

    yield make
    for server in made:
        server.close()


def test_a_stop_before_the_remotes_headers_reaches_the_remote(scripted) -> None:
    remote = scripted(head_delay=300)
    backend = remote.backend(timeout_s=300)  # neither side gives up before the hang guards below
    answer = backend.reply([], QUESTION, GenerationSettings(max_new_tokens=8))
    ended: list = []

    def read() -> None:
        try:
            ended.append(answer.text())
        except Exception as exc:  # noqa: BLE001 - checked below
            ended.append(exc)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    assert remote.posted.wait(120)  # the request is out; the remote sends no headers until its client goes
    answer.stop()
    assert remote.gone.wait(120), "the remote never saw its client go"
    reader.join(120)
    assert ended and not isinstance(ended[0], Exception), ended  # ended by the Stop, not by a timeout
    assert answer.stats.stopped
    backend.engine.close()


def test_a_local_stop_string_ends_the_remote_stream(scripted) -> None:
    # the remote holds its next piece after "STOP" until its client leaves (or a minute passes)
    remote = scripted(pieces=("Paris", " is. ", "STOP", *[" more"] * 40), hold_after="STOP")
    backend = remote.backend()
    answer = backend.reply([], QUESTION, GenerationSettings(max_new_tokens=64, stop=("STOP",)))
    assert answer.text() == "Paris is. "
    assert answer.stats.finish == "stop" and not answer.stats.stopped
    assert remote.gone.wait(120) and remote.sent == 3, "the remote kept streaming after the stop string"
    backend.engine.close()


def test_a_remotes_count_that_is_not_a_number_is_not_used(scripted) -> None:
    remote = scripted(usage={"prompt_tokens": "12", "completion_tokens": 2, "total_tokens": "14"})
    backend = remote.backend()
    answer = backend.reply([], QUESTION, GenerationSettings(max_new_tokens=8))
    assert answer.text() == "Paris"
    assert isinstance(answer.stats.prompt_tokens, int) and answer.stats.answer_tokens == 2
    backend.engine.close()


def test_a_remote_down_at_start_is_asked_again_until_it_says_its_window(scripted) -> None:
    remote = scripted(models=[{"id": "m", "object": "model", "context_window": 8192}], fail_models=1)
    backend = remote.backend(model="m")  # --remote-model given: the model name alone is not enough
    engine = backend.engine
    assert engine.context_window == 4096 and any("could not be asked" in n for n in backend.loaded.notices)
    engine.RETRY_S = 0  # type: ignore[misc]
    assert backend.reply([], QUESTION, GenerationSettings(max_new_tokens=8)).text() == "Paris"
    assert engine.context_window == 8192
    assert backend.loaded.notices == ()  # not frozen at start
    assert "8192-token window" in backend.loaded.describe() and "assumed" not in backend.loaded.describe()
    engine.close()


def test_the_hosts_context_window_is_kept_and_shown_over_the_remotes(scripted) -> None:
    remote = scripted(models=[{"id": "m", "object": "model", "context_window": 8192},
                              {"id": "b", "object": "model", "context_window": True}])
    backend = remote.backend(limits=Limits(context_window=2048))
    assert backend.engine.context_window == 2048 and backend.engine.reported_window == 8192
    assert "2048-token window (--context-window; the remote's is 8192)" in backend.loaded.describe()
    assert backend.prepare([], QUESTION, GenerationSettings(max_new_tokens=8)).window == 2048
    backend.engine.close()
    flagged = remote.backend(model="b")  # a JSON true is no window
    assert flagged.engine.context_window == 4096 and "(assumed)" in flagged.loaded.describe()
    flagged.engine.close()


def test_a_hosts_context_window_above_the_remotes_is_cut_to_the_remotes(scripted) -> None:
    """Known at the start, it is refused like a cap above a local model's; learnt later
    (the remote was down), prompts are fitted to the remote's window, not sent to its 400."""
    remote = scripted(models=[{"id": "m", "object": "model", "context_window": 2048}])
    with pytest.raises(SettingsError, match="larger than the model's own 2048"):
        remote.backend(limits=Limits(context_window=4096))
    remote.fail_models = 1
    backend = remote.backend(limits=Limits(context_window=4096))
    engine = backend.engine
    assert engine.context_window == 4096 and "(--context-window)" in backend.loaded.describe()
    engine.RETRY_S = 0  # type: ignore[misc]
    assert backend.reply([], QUESTION, GenerationSettings(max_new_tokens=8)).text() == "Paris"
    assert engine.context_window == 2048 and engine.reported_window == 2048
    assert backend.prepare([], QUESTION, GenerationSettings(max_new_tokens=8)).window == 2048
    assert "2048-token window (the remote's; --context-window 4096 is above it)" in backend.loaded.describe()
    engine.close()


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

def stop_in_the_page(front_url: str, tokens: int) -> None:
    """The page's Stop, as gradio_client sends it: a long /chat answer cancelled after three
    updates. The cancel closes the page's answer, which closes the remote's stream."""
    job = Client(front_url, verbose=False).submit(message=ENDLESS[0]["content"], history=[], max_new_tokens=tokens,
                                                  temperature=0, api_name="/chat")
    for i, _ in enumerate(job):
        if i == 3:
            break
    job.cancel()


def kill_mid_answer(client: openai.OpenAI, model: str, kill: Callable[[], None], front_url: str) -> None:
    """Kill the remote three pieces into a streamed answer: that answer ends with a clear
    error, and the next requests (whole, streamed, and through the page's /chat) say the
    remote cannot be reached, as 503 before any stream begins."""
    stream = client.chat.completions.create(model=model, messages=ENDLESS, temperature=0, max_tokens=1500,
                                            stream=True)
    read = 0
    with pytest.raises(openai.APIError, match="closed the connection in the middle of the answer"):
        for chunk in stream:
            read += bool(chunk.choices and chunk.choices[0].delta.content)
            if read == 3:
                kill()
    with pytest.raises(openai.InternalServerError, match="cannot be reached") as down:
        client.chat.completions.create(model=model, messages=ASK, max_tokens=8)
    assert down.value.status_code == 503
    with pytest.raises(openai.InternalServerError, match="cannot be reached"):  # before the 200 of a stream
        client.chat.completions.create(model=model, messages=ASK, max_tokens=8, stream=True)
    with pytest.raises(Exception, match="cannot be reached"):
        chat(front_url)



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
def test_answers_as_json_pass_through_to_the_remote(engine: Engine, front: AppProcess) -> None:
    asked = dict(model="bundled", temperature=0, max_tokens=200, response_format={
        "type": "json_schema", "json_schema": {"name": "person", "schema": SCHEMAS["person"], "strict": True}},
        messages=[{"role": "system", "content": instruction("person")}, {"role": "user", "content": PROMPTS["person"][0]}])
    through = api(front).chat.completions.create(**asked).choices[0].message.content
    assert through == api(engine.app).chat.completions.create(**asked).choices[0].message.content
    jsonschema.validate(json.loads(through), SCHEMAS["person"])
    lookahead = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "string", "pattern": "(?=a)b"}}}
    with pytest.raises(openai.BadRequestError, match="Lookahead is not supported"):  # the remote's own check
        api(front).chat.completions.create(**{**asked, "response_format": lookahead})


@pytest.mark.server
def test_stop_through_the_front_end_ends_the_engines_generation(engine: Engine, front: AppProcess) -> None:
    before = engine.output().count(LEFT)
    read_then_leave(api(front).chat.completions.create(model="bundled", messages=ENDLESS, temperature=0,
                                                       max_tokens=3000, stream=True))
    log = wait_for_log(engine, LEFT, before + 1)
    assert int(re.findall(re.escape(LEFT) + r" after (\d+) tokens", log)[-1]) < 3000
    stop_in_the_page(front.url, 3000)
    log = wait_for_log(engine, LEFT, before + 2)
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
    # the longest answer allowed: on a busy machine the page may take many seconds to act on a
    # click while it draws a fast stream, and Stop must still land mid-answer
    set_max_new_tokens(page, 4096)
    send(page, ENDLESS[0]["content"])
    wait_growing(page, 20)
    page.locator("#stop").click()
    wait_idle(page)
    expect(page.locator(NOTE).last).to_contain_text("Stopped")
    log = wait_for_log(engine, LEFT, before + 1)
    assert int(re.findall(re.escape(LEFT) + r" after (\d+) tokens", log)[-1]) < 4096


@pytest.mark.server
@pytest.mark.browser
def test_a_locked_front_end_shows_visitors_neither_the_remotes_url_nor_its_words(engine: Engine, browser) -> None:
    """The remote's own error text can hold its server paths: the locked front end's log has
    it, its visitors (page, /chat, /v1) get the front end's sentence; the model line has no URL."""
    locked = AppProcess("--engine", "openai", "--api-base", f"http://127.0.0.1:{engine.port}/v1",
                        "--remote-model", "no-such-model", "--lock-settings", "--remote-timeout", "30").wait_ready()
    remote_words = "does not exist here"  # the engine's own 404 text
    try:
        page = httpx.get(f"{locked.url}config", timeout=30).text + model_info(browser, locked.url)
        assert "remote OpenAI-compatible engine" in page and f"127.0.0.1:{engine.port}" not in page
        client = api(locked)
        model = client.models.list().data[0].id
        with pytest.raises(openai.APIStatusError) as failed:
            client.chat.completions.create(model=model, messages=ASK, max_tokens=8)
        assert failed.value.status_code == 502 and "--remote-model" in failed.value.message
        assert remote_words not in failed.value.message
        with pytest.raises(openai.APIStatusError) as streamed:
            client.chat.completions.create(model=model, messages=ASK, max_tokens=8, stream=True)
        assert remote_words not in streamed.value.message
        with pytest.raises(Exception, match="--remote-model") as page_failed:
            chat(locked.url)
        assert remote_words not in str(page_failed.value)
        assert remote_words in wait_for_log(locked, remote_words, 1)  # the host reads it in the log
    finally:
        locked.stop()


@pytest.mark.server
def test_a_killed_engine_is_a_clear_error_and_its_restart_is_used_at_once(engine: Engine, front: AppProcess) -> None:
    """Last in this file: it kills the engine (and starts it again)."""
    client = api(front)
    kill_mid_answer(client, "bundled", engine.kill, front.url)
    engine.restart()
    assert "Paris" in chat(front.url)
    assert "Paris" in client.chat.completions.create(model="bundled", messages=ASK, temperature=0,
                                                     max_tokens=32).choices[0].message.content
