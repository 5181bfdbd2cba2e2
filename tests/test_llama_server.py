"""`--engine openai` against a server written elsewhere: llama-cpp-python's OpenAI-compatible
server (`python -m llama_cpp.server`) on the bundled model's GGUF, as it is shipped, with a
real phi3ui process in front of it. The tests talk to phi3ui with the `openai` client and
gradio_client, and to llama.cpp's server directly only to compare.

Two pairs, each started once for the module:
- `llama` with llama-cpp-python's defaults (its model id is the GGUF's path, a 2048-token
  context that `/v1/models` does not report, a new request ends the answer it streams) and
  `front`, phi3ui with its defaults in front of it;
- `tuned_llama` (`--model_alias smollm2 --interrupt_requests False`) and `tuned`, phi3ui with
  `--context-window 2048 --concurrency 2`: what the README advises for llama.cpp's server.

What llama-cpp-python does differently from phi3ui's own /v1, each checked here: no usage in
streams, no window in `/v1/models`, a too-long prompt streamed as an HTTP 200 with an empty
stream (only its non-streamed answer is the 400), any model name served, and any request
(even `GET /v1/models`) ending the answer it is streaming.

llama-cpp-python compiles llama.cpp when pip installs it (scripts/install.sh --test). Marked
`llama_server` (and `server`, `slow`): `pytest -m llama_server` runs only these.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from playwright.sync_api import Browser

from phi3ui.bundled import gguf_path
from phi3ui.remote_engine import WINDOW_FIELDS, MessagesPrompt, TokenEstimate
from tests.app_process import AppProcess, end_process, free_port
from tests.browsing import model_info
from tests.test_openai_api import read_then_leave, wait_for_log
from tests.test_remote_engine import ASK, ENDLESS, api, chat, kill_mid_answer, stop_in_the_page
from tests.waiting import wait_until

pytestmark = [pytest.mark.llama_server, pytest.mark.server, pytest.mark.slow]

GONE = "Disconnected from client"  # what llama-cpp-python's server prints when it ends a stream its client left
COUNT = [{"role": "user", "content": "Count from 1 to 20, one number per line."}]
LONG = [{"role": "user", "content": "word " * 2200}]  # about 2,230 of llama.cpp's tokens; phi3ui estimates 3,675


def need_llama_cpp_server() -> None:
    missing = [m for m in ("llama_cpp", "sse_starlette", "starlette_context") if importlib.util.find_spec(m) is None]
    if missing:
        message = (f"llama-cpp-python[server] is not installed ({', '.join(missing)} missing): "
                   "bash scripts/install.sh --test")
        pytest.fail(message) if os.environ.get("CI") else pytest.skip(message)


class LlamaServer:
    """`python -m llama_cpp.server` on the bundled GGUF, its output in a log file (`output`);
    a test may kill it and start it again on the same port."""

    def __init__(self, *args: str) -> None:
        self.args, self.port = args, free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.log_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"phi3ui-llama-server-{self.port}.log"
        self.logs: list[str] = []
        self.start()

    def start(self, timeout: float = 120) -> None:
        self.log = self.log_path.open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf_path()), "--host", "127.0.0.1",
             "--port", str(self.port), "--verbose", "False", *self.args],
            stdout=self.log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        wait_until(self._answers, timeout, lambda: f"llama_cpp.server to start:\n{self.output()}", every_s=0.2)

    def _answers(self) -> bool:
        """Whether the server lists its model yet; one that has exited never will."""
        if self.process.poll() is not None:
            raise RuntimeError(f"llama_cpp.server exited with {self.process.returncode}:\n{self.output()}")
        try:
            return httpx.get(f"{self.url}/models", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def output(self) -> str:
        return "".join(self.logs) + self.log_path.read_text()

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()
        self.logs.append(self.output())
        self.log.close()

    def stop(self) -> None:
        end_process(self.process)
        self.log.close()

    def client(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url, api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def llama() -> Iterator[LlamaServer]:
    need_llama_cpp_server()
    server = LlamaServer()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def front(llama: LlamaServer) -> Iterator[AppProcess]:
    app = AppProcess("--engine", "openai", "--api-base", llama.url, "--remote-timeout", "30").wait_ready()
    yield app
    app.stop()


@pytest.fixture(scope="module")
def tuned_llama() -> Iterator[LlamaServer]:
    need_llama_cpp_server()
    server = LlamaServer("--model_alias", "smollm2", "--interrupt_requests", "False")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def tuned(tuned_llama: LlamaServer) -> Iterator[AppProcess]:
    app = AppProcess("--engine", "openai", "--api-base", tuned_llama.url, "--remote-timeout", "30",
                     "--context-window", "2048", "--concurrency", "2").wait_ready()
    yield app
    app.stop()


def model(app: AppProcess) -> str:
    return api(app).models.list().data[0].id


def health(app: AppProcess) -> tuple[int, dict]:
    response = httpx.get(f"{app.url}health", timeout=10)
    return response.status_code, response.json()


def wait_for_health(app: AppProcess, status: int, timeout: float = 30) -> dict:
    """/health's body once it answers with `status`."""
    def answered() -> dict | None:
        code, body = health(app)
        return body if code == status else None

    return wait_until(answered, timeout, lambda: f"/health to answer {status} (it answers {health(app)})",
                      every_s=0.1)


def text_of(chunks: list) -> str:
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def finish_of(chunks: list) -> str | None:
    return [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason][-1]

def both_whole(client: openai.OpenAI, name: str) -> None:
    """Two clients asking at the same moment both get their whole (and the same) answer."""
    answers: dict[int, list] = {}
    failures: list[Exception] = []

    def ask(i: int) -> None:
        try:
            answers[i] = list(client.chat.completions.create(model=name, messages=COUNT, temperature=0,
                                                             max_tokens=40, stream=True))
        except Exception as exc:  # noqa: BLE001 - reported below
            failures.append(exc)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not failures and len(answers) == 2
    assert text_of(answers[0]) == text_of(answers[1]) and finish_of(answers[0]) in ("stop", "length")


@pytest.mark.browser
def test_the_model_and_the_window_llama_cpp_does_not_report(llama: LlamaServer, front: AppProcess,
                                                            browser: Browser) -> None:
    """llama-cpp-python's /v1/models names the model by its file's path and says no window:
    phi3ui serves that name, assumes 4,096 tokens and says so (log, page, /v1/models, /health)."""
    cards = httpx.get(f"{llama.url}/models", timeout=10).json()["data"]
    assert [c["id"] for c in cards] == [str(gguf_path())]
    assert not any(field in cards[0] for field in (*WINDOW_FIELDS, "n_ctx"))
    served = api(front).models.list().data
    assert [m.id for m in served] == [str(gguf_path())]
    assert served[0].model_extra["context_window"] == 4096
    assert "does not say its context window; assuming 4096 tokens" in front.output()
    status, state = health(front)
    assert status == 200 and (state["model"], state["context_window"]) == (str(gguf_path()), 4096)
    shown = model_info(browser, front.url)
    assert "4096-token window (assumed)" in shown and "The host sets it with --context-window" in shown


def test_a_streamed_answer_arrives_in_pieces_with_its_finish_reason_and_counts(llama: LlamaServer,
                                                                              front: AppProcess) -> None:
    """llama-cpp-python streams no usage, even when asked: phi3ui counts the answer's pieces
    (one a token: llama.cpp's own count for the same answer) and estimates the prompt."""
    name = model(front)
    own = llama.client().chat.completions.create(model=name, messages=ASK, temperature=0, max_tokens=48)
    assert own.usage.completion_tokens > 5
    direct = list(llama.client().chat.completions.create(model=name, messages=ASK, temperature=0, max_tokens=48,
                                                         stream=True, stream_options={"include_usage": True}))
    assert all(c.usage is None for c in direct)  # the difference: no usage chunk
    chunks = list(api(front).chat.completions.create(model=name, messages=ASK, temperature=0, max_tokens=48,
                                                     stream=True, stream_options={"include_usage": True}))
    pieces = [c for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(pieces) >= 5, "the answer came in one piece"
    assert text_of(chunks) == own.choices[0].message.content and "Paris" in text_of(chunks)
    assert finish_of(chunks) == own.choices[0].finish_reason
    usage = chunks[-1].usage
    assert usage.completion_tokens == own.usage.completion_tokens
    assert usage.prompt_tokens == TokenEstimate().count(MessagesPrompt.of(ASK))
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    whole = api(front).chat.completions.create(model=name, messages=ASK, temperature=0, max_tokens=48)
    assert whole.choices[0].message.content == own.choices[0].message.content
    assert whole.usage.completion_tokens == own.usage.completion_tokens
    short = api(front).chat.completions.create(model=name, messages=ENDLESS, temperature=0, max_tokens=5)
    assert short.choices[0].finish_reason == "length" and short.usage.completion_tokens == 5


def test_stop_strings_end_the_answer_as_llama_cpp_ends_it(llama: LlamaServer, front: AppProcess) -> None:
    name = model(front)
    own = llama.client().chat.completions.create(model=name, messages=COUNT, temperature=0, max_tokens=64,
                                                 stop=["3"])
    assert own.choices[0].finish_reason == "stop" and own.usage.completion_tokens < 64
    whole = api(front).chat.completions.create(model=name, messages=COUNT, temperature=0, max_tokens=64, stop=["3"])
    chunks = list(api(front).chat.completions.create(model=name, messages=COUNT, temperature=0, max_tokens=64,
                                                     stop=["3"], stream=True))
    for text, finish in ((whole.choices[0].message.content, whole.choices[0].finish_reason),
                         (text_of(chunks), finish_of(chunks))):
        assert text == own.choices[0].message.content and "2" in text and "3" not in text
        assert finish == "stop"


def test_stop_through_phi3ui_ends_llama_cpps_generation(llama: LlamaServer, front: AppProcess) -> None:
    """A client that leaves, and the page's Stop (gradio_client's cancel): llama.cpp's server
    sees its client go and ends the stream, and the next request is answered."""
    name, before = model(front), llama.output().count(GONE)
    read_then_leave(api(front).chat.completions.create(model=name, messages=ENDLESS, temperature=0, max_tokens=1500,
                                                       stream=True))
    wait_for_log(llama, GONE, before + 1)
    stop_in_the_page(front.url, 1500)
    wait_for_log(llama, GONE, before + 2)
    assert "Paris" in chat(front.url)


def test_phi3uis_one_slot_keeps_llama_cpp_from_cutting_answers(llama: LlamaServer, front: AppProcess) -> None:
    """llama-cpp-python ends the answer it streams when another request comes (its default
    `interrupt_requests`); phi3ui's default `--concurrency 1` sends one at a time, so two
    clients at once both get their whole answer."""
    both_whole(api(front), model(front))


def test_a_prompt_longer_than_llama_cpps_context_is_a_clear_400(llama: LlamaServer, front: AppProcess) -> None:
    """Within the assumed 4,096 tokens but over llama.cpp's 2,048: its stream is an HTTP 200
    with no event at all; phi3ui asks once more without streaming and passes on its 400."""
    name = model(front)
    with httpx.stream("POST", f"{llama.url}/chat/completions", timeout=60,
                      json={"model": name, "messages": LONG, "max_tokens": 8, "stream": True}) as response:
        assert response.status_code == 200 and not [line for line in response.iter_lines() if line]
    for stream in (False, True):
        with pytest.raises(openai.BadRequestError, match="maximum context length is 2048 tokens") as refused:
            api(front).chat.completions.create(model=name, messages=LONG, max_tokens=8, stream=stream)
        assert refused.value.status_code == 400
    with pytest.raises(Exception, match="maximum context length is 2048 tokens"):
        chat(front.url, LONG[0]["content"])


@pytest.mark.browser
def test_the_advised_setup_fits_long_chats_and_answers_two_at_once(tuned_llama: LlamaServer,
                                                                  tuned: AppProcess, browser: Browser) -> None:
    """`--model_alias` names the model; `--context-window` as llama.cpp's `--n_ctx` (2048 by
    default) cuts a long chat to fit; with `--interrupt_requests False` llama.cpp queues a
    second request instead of ending the first, so phi3ui may send two at once."""
    served = api(tuned).models.list().data
    assert [m.id for m in served] == ["smollm2"] and served[0].model_extra["context_window"] == 2048
    assert health(tuned)[1]["context_window"] == 2048
    assert "2048-token window (--context-window)" in model_info(browser, tuned.url)
    history = []
    for i in range(6):
        history += [{"role": "user", "content": f"Note {i}: " + "word " * 300},
                    {"role": "assistant", "content": "Noted."}]
    reply = api(tuned).chat.completions.create(model="smollm2", messages=[*history, *ASK], temperature=0,
                                               max_tokens=32)
    assert reply.choices[0].message.content and reply.choices[0].finish_reason in ("stop", "length")
    cut = [line for line in tuned.output().splitlines() if "exchanges left out" in line][-1]
    assert " 0 exchanges left out" not in cut

    both_whole(api(tuned), "smollm2")


def test_llama_cpp_killed_is_a_clear_error_and_its_restart_is_used_at_once(llama: LlamaServer,
                                                                          front: AppProcess) -> None:
    """Last in this file: it kills llama.cpp's server mid-answer, then starts it again on the
    same port. /health says it is down and then, with no request sent, that it is back."""
    client, name = api(front), model(front)
    kill_mid_answer(client, name, llama.kill, front.url)
    state = wait_for_health(front, 503)
    assert state["status"] == "unavailable" and "cannot be reached" in state["reason"]
    llama.start()
    assert wait_for_health(front, 200)["model"] == name
    assert "Paris" in chat(front.url)
    reply = client.chat.completions.create(model=name, messages=ASK, temperature=0, max_tokens=32)
    assert "Paris" in reply.choices[0].message.content and reply.choices[0].finish_reason in ("stop", "length")
