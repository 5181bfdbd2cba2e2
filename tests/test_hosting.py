"""Hosting for many: concurrent sessions, continuous batching, server-side limits, hostile
API calls, a bounded load test, locked settings, Spaces defaults and share links.

The server tests share one app: the bundled model on genai with `--concurrency 4` and
`--lock-settings`. Answers are greedy and short, so they are deterministic and cheap on
two shared cores. `PHI3UI_LOAD_CONVERSATIONS` changes the load test's length (default 100; how
many a minute the server answers is bench/concurrency.py's figure, not a test's).
"""

from __future__ import annotations

import inspect
import os
import re
import threading
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest

from tests.app_process import AppProcess
from tests.waiting import wait_until
from phi3ui import server
from phi3ui.chat import ChatBackend
from phi3ui.settings import BUNDLED, RuntimeSettings

QUESTIONS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "把“早上好”翻译成英语和日语。",
    "Name three fruits that are red.",
]
# Words any answer to each question contains, and no answer to the others does.
TOPICS = dict(zip(QUESTIONS, [r"Paris", r"(?i)sea|wave|ocean|tide|shore", r"(?i)早上好|morning",
                              r"(?i)fruit|apple|strawberr|cherr|raspberr"]))
SHORT = 16  # max new tokens for most answers here


# --- launch options (fast) -------------------------------------------------------------
def test_spaces_locks_settings_by_default(monkeypatch):
    monkeypatch.delenv("PHI3UI_LOCK_SETTINGS", raising=False)
    monkeypatch.delenv("GRADIO_SERVER_NAME", raising=False)
    monkeypatch.delenv("SPACE_ID", raising=False)
    local = server.parse_args([])
    assert local.lock_settings is False and local.host == "127.0.0.1"
    monkeypatch.setenv("SPACE_ID", "someone/phi3ui")
    space = server.parse_args([])
    assert space.lock_settings is True and space.host == "0.0.0.0"
    assert server.parse_args(["--no-lock-settings"]).lock_settings is False


def test_environment_variables_set_launch_options(monkeypatch):
    monkeypatch.setenv("GRADIO_SERVER_NAME", "0.0.0.0")
    monkeypatch.setenv("GRADIO_SERVER_PORT", "7999")
    monkeypatch.setenv("PHI3UI_CONCURRENCY", "4")
    monkeypatch.setenv("PHI3UI_MODEL", "someone/phi3-openvino")
    args = server.parse_args([])
    assert (args.host, args.port, args.concurrency, args.model) == ("0.0.0.0", 7999, 4, "someone/phi3-openvino")


@pytest.mark.parametrize("flag", ["--concurrency", "--queue-size", "--max-message-chars"])
def test_nonsense_counts_are_refused(flag, capsys):
    with pytest.raises(SystemExit):
        server.parse_args([flag, "0"])
    assert "must be at least 1" in capsys.readouterr().err


def test_share_failure_is_reported():
    assert server.report_share(True, None, "http://127.0.0.1:7860/").startswith("Could not make a public share link")
    assert server.report_share(True, "https://x.gradio.live", "http://127.0.0.1:7860/") is None
    assert server.report_share(False, None, "http://127.0.0.1:7860/") is None


def test_trust_remote_code_cannot_be_set_from_the_page():
    """The page's export takes no trust flag, and what it exports never trusts remote code."""
    from phi3ui.ui import Page

    params = inspect.signature(Page.export_and_load).parameters
    assert not [name for name in params if "trust" in name or "remote" in name]
    seen = []
    backend = ChatBackend()
    backend.load = lambda model, export, runtime, progress=None: seen.append(export)  # type: ignore[method-assign]
    page = Page(backend)
    args = {"model": "someone/model", "weight_format": "int4", "group_size": 128, "ratio": 0.6,
            "sym": True, "all_layers": False, "device": "CPU", "engine": "genai", "prompt_lookup": False}
    for _ in page.export_and_load(**{k: v for k, v in args.items() if k in params}):
        pass
    assert seen and seen[0].trust_remote_code is False
    assert "--trust-remote-code" not in seen[0].cli_args()


def test_locked_page_refuses_to_export():
    import gradio as gr

    from phi3ui.ui import Page

    backend = SimpleNamespace(loaded=None, concurrency=1, load=lambda *a, **k: pytest.fail("locked page loaded a model"))
    page = Page(backend, lock_settings=True)  # type: ignore[arg-type]
    with pytest.raises(gr.Error, match="locked"):
        next(page.export_and_load("bundled", "int4", 64, 0.6, True, False, "CPU", "genai", False))


def test_page_refuses_prompt_lookup_on_the_optimum_engine_before_loading():
    import gradio as gr

    from phi3ui.ui import Page

    backend = SimpleNamespace(loaded=None, concurrency=1, load=lambda *a, **k: pytest.fail("an impossible runtime was loaded"))
    page = Page(backend)  # type: ignore[arg-type]
    with pytest.raises(gr.Error, match="Prompt lookup needs the genai engine"):
        next(page.export_and_load("bundled", "int4", 64, 0.6, True, False, "CPU", "optimum", True))


# --- the batching engine (real model, no server) ----------------------------------------
@pytest.fixture(scope="module")
def batching_engine(bundled):
    from phi3ui.engines import load_engine

    engine = load_engine(bundled.folder, RuntimeSettings(engine="genai"), concurrency=4)
    yield engine
    engine.close()


@pytest.mark.slow
@pytest.mark.parametrize("text", ["早上好世界，你好吗？", "🍕🍕🍕 pizza 👍🏽 done", "It's  fine.\n\n  code\n"])
def test_incremental_text_never_splits_a_character(batching_engine, text):
    from phi3ui.batching import IncrementalText

    tokenizer = batching_engine.tokenizer
    ids = [int(i) for i in tokenizer.encode(text, add_special_tokens=False).input_ids.data[0]]
    decoder = IncrementalText(batching_engine.decode)
    chunks = [decoder.push([i]) for i in ids] + [decoder.flush()]
    assert "".join(chunks) == text
    assert not any("\ufffd" in c for c in chunks)
    # a character arrives as soon as its last token does, not at the end
    assert sum(1 for c in chunks if c) >= len(text.split()) // 2 + 2


@pytest.mark.slow
def test_batching_engine_answers_together_like_alone(batching_engine):
    from phi3ui.settings import GenerationSettings

    settings = GenerationSettings(max_new_tokens=SHORT)

    def ask(question: str, out: dict, key) -> None:
        prompt = batching_engine.render([{"role": "user", "content": question}])
        answer, start = batching_engine.answer(prompt, settings), time.monotonic()
        chunks = list(answer)
        out[key] = SimpleNamespace(text="".join(chunks), stats=answer.stats, start=start, end=time.monotonic(),
                                   chunks=chunks)

    alone: dict = {}
    for i, question in enumerate(QUESTIONS):
        ask(question, alone, i)
    together: dict = {}
    threads = [threading.Thread(target=ask, args=(q, together, i)) for i, q in enumerate(QUESTIONS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    for i in range(len(QUESTIONS)):
        assert together[i].text == alone[i].text != ""
        assert together[i].text == together[i].stats.text  # streamed chunks add up to the decoded answer
        assert not any("\ufffd" in c for c in together[i].chunks)
    assert max(r.start for r in together.values()) < min(r.end for r in together.values())


@pytest.mark.slow
def test_batching_engine_stops_within_a_token(batching_engine):
    from phi3ui.settings import GenerationSettings

    prompt = batching_engine.render([{"role": "user", "content": "Tell me a long story about a dragon."}])
    answer = batching_engine.answer(prompt, GenerationSettings(max_new_tokens=300))
    for pieces, _ in enumerate(answer, start=1):
        if pieces == 5:
            answer.stop()
    assert answer.stats.stopped and answer.stats.answer_tokens < 12
    # the slot is free again: a new answer starts at once
    again = batching_engine.answer(prompt, GenerationSettings(max_new_tokens=2))
    assert again.text() and again.stats.answer_tokens == 2


# --- the app as a server --------------------------------------------------------------
@pytest.fixture(scope="module")
def app(bundled):
    # A small KV cache (64 blocks) fills during the load test's warm-up, so memory after it
    # must be flat; the default cache (room for 4 full windows) would take thousands of chats.
    app = AppProcess("--model", BUNDLED, "--engine", "genai", "--concurrency", "4", "--lock-settings",
                     "--max-message-chars", "2000", env={"PHI3UI_KV_CACHE_BLOCKS": "64"}).wait_ready()
    yield app
    app.stop()


def same_answer(got: str, expected: str) -> bool:
    """Equal, or equal for the first 24 characters: a batch of different sizes changes the
    logits in the last bits, which can flip a near-tie late in a greedy answer. Another
    question's answer never shares that much of its start."""
    return got == expected or (len(got) >= 24 and got[:24] == expected[:24])


def answers(question: str, got: str, alone: dict[str, str]) -> bool:
    """`got` answers `question`, not another session's: word for word as asked alone, or
    (when a near-tie flipped early, which happens in a few of hundreds of batched greedy
    answers) on its topic and on no other question's topic."""
    if same_answer(got, alone[question]):
        return True
    others = [TOPICS[q] for q in QUESTIONS if q != question]
    return bool(re.search(TOPICS[question], got)) and not any(re.search(t, got) for t in others)


def client(app: AppProcess):
    from gradio_client import Client

    return Client(app.url, verbose=False)


def chat(c, message: str, history: list | None = None, **settings) -> str:
    return c.predict(message, history or [], settings.pop("max_new_tokens", SHORT), api_name="/chat", **settings)


@pytest.fixture(scope="module")
def alone(app) -> dict[str, str]:
    """Each question asked on its own: what the concurrent answers must equal."""
    c = client(app)
    answers_alone = {q: chat(c, q) for q in QUESTIONS}
    for question, answer in answers_alone.items():  # the topic check below relies on these
        assert re.search(TOPICS[question], answer), answer
    return answers_alone


@pytest.mark.server
@pytest.mark.slow
def test_four_sessions_at_once_get_their_own_answers(app, alone):
    """Batched together, each session's answer is its own question's (that they really run
    at the same time is the next test's)."""
    clients = [client(app) for _ in QUESTIONS]
    results: dict[int, SimpleNamespace] = {}

    def session(i: int) -> None:
        job = clients[i].submit(QUESTIONS[i], [], SHORT, api_name="/chat")
        for _ in job:
            pass
        results[i] = SimpleNamespace(text=job.result())

    threads = [threading.Thread(target=session, args=(i,)) for i in range(len(QUESTIONS))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=180)
    assert sorted(results) == list(range(len(QUESTIONS))), "not every session finished"
    for i, question in enumerate(QUESTIONS):
        assert answers(question, results[i].text, alone), f"session {i}: {results[i].text!r}"


@pytest.mark.server
@pytest.mark.slow
def test_four_sessions_are_answered_at_the_same_time(app):
    """With continuous batching the four sessions hold the engine's four slots at once (one at
    a time, at most one slot would ever be busy). Read from /health while the long answers
    stream, then stopped."""
    stories = ["Write a story about a cat.", "Write a story about a ship.", "Write a story about a tree.",
               "Write a story about a robot."]
    jobs = [client(app).submit(story, [], 400, api_name="/chat") for story in stories]

    def every_slot_busy() -> bool:
        return httpx.get(f"{app.url}health", timeout=30).json()["slots_busy"] == len(stories)

    def every_session_has_text() -> bool:
        assert not any(job.done() for job in jobs), "an answer ended before every session had text"
        return all(job.outputs() for job in jobs)

    try:
        wait_until(every_slot_busy, 120, "the four sessions to hold the four slots at once", every_s=0.02)
        wait_until(every_session_has_text, 120, "text in every session", every_s=0.02)
        assert not any(job.done() for job in jobs)
    finally:
        for job in jobs:
            job.cancel()


@pytest.mark.server
@pytest.mark.slow
def test_each_session_keeps_its_own_generation_settings(app):
    """Two sessions answered in the same batch with different settings each get what they
    asked for. (Greedy, so answers can be compared exactly: seeded sampling may take a
    different turn in a batch, where the logits differ in the last bits.)"""
    a, b = client(app), client(app)
    question = "Tell me about the moon."
    own = {"a": dict(max_new_tokens=3),
           "b": dict(max_new_tokens=SHORT, repetition_penalty=1.3, system_prompt="You are a pirate.")}
    alone = {"a": chat(a, question, **own["a"]), "b": chat(b, question, **own["b"])}
    out: dict = {}
    threads = [threading.Thread(target=lambda k=k, c=c: out.__setitem__(k, chat(c, question, **own[k])))
               for k, c in (("a", a), ("b", b))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert same_answer(out["a"], alone["a"]) and same_answer(out["b"], alone["b"])
    assert len(out["a"]) < len(out["b"]) and out["b"] != chat(b, question, max_new_tokens=SHORT)


LIMITS = {
    "message too long": (dict(message="x" * 2001), "limit is 2,000"),
    "huge payload": (dict(message="y" * (8 * 1024 * 1024)), "limit is 2,000"),
    "metadata not an object": (dict(history=[{"role": "user", "content": "a", "metadata": "x"}]),
                               "metadata must be"),
    "max new tokens": (dict(max_new_tokens=5000), "Max new tokens must be between 1 and"),
    "max new tokens zero": (dict(max_new_tokens=0), "Max new tokens must be between 1 and"),
    "temperature": (dict(temperature=3), "Temperature must be between 0 and 2"),
    "negative temperature": (dict(temperature=-0.1), "Temperature must be between 0 and 2"),
    "top-p": (dict(top_p=0), "Top-p must be above 0"),
    "top-k": (dict(top_k=5000), "Top-k must be between 0"),
    "repetition penalty": (dict(repetition_penalty=5), "Repetition penalty must be between"),
    "seed": (dict(seed=-3), "Seed must be between"),
    "system prompt": (dict(system_prompt="s" * 2001), "system prompt is 2001 characters"),
    "message not text": (dict(message=123), "must be text"),
    "message a dict": (dict(message={"text": "hi"}), "must be text"),
    "history a string": (dict(history="hello"), "History must be a list"),
    "history of pairs": (dict(history=[["hi", "hello"]]), "Each history entry must be a {role, content}"),
    "content not text": (dict(history=[{"role": "user", "content": {"type": "image", "url": "x"}}]),
                         "content must be text"),
    "unknown role": (dict(history=[{"role": "system", "content": "x"}]), "roles must be 'user' or 'assistant'"),
    "settings of the wrong type": (dict(max_new_tokens="lots"), "max_new_tokens must be a whole number"),
    "settings as a list": (dict(temperature=[1]), "temperature must be a number"),
}


@pytest.mark.server
@pytest.mark.slow
@pytest.mark.parametrize("case", list(LIMITS))
def test_limits_hold_whatever_a_client_sends(app, case):
    from gradio_client.exceptions import AppError

    values, expected = LIMITS[case]
    call = {"message": "hi", "history": [], "max_new_tokens": SHORT, **values}
    with pytest.raises(AppError) as refused:
        client(app).predict(**call, api_name="/chat")
    assert expected in str(refused.value)


@pytest.mark.server
@pytest.mark.slow
def test_server_keeps_serving_after_hostile_calls(app, alone):
    c = client(app)
    for values, _ in LIMITS.values():
        call = {"message": "hi", "history": [], "max_new_tokens": SHORT, **values}
        job = c.submit(**call, api_name="/chat")
        with pytest.raises(Exception):
            job.result()
    # raw requests that are not even a gradio call
    for body in (b"{", b"[]", b'{"data": "not a list"}', b"\x00" * 1000):
        response = httpx.post(f"{app.url}gradio_api/call/chat", content=body,
                              headers={"content-type": "application/json"}, timeout=30)
        assert 400 <= response.status_code < 600  # refused, not served
    assert chat(c, QUESTIONS[0]) == alone[QUESTIONS[0]]
    assert app.process.poll() is None


@pytest.mark.server
@pytest.mark.slow
def test_locked_server_offers_no_export_to_clients(app):
    c = client(app)
    assert list(c.view_api(print_info=False, return_format="dict")["named_endpoints"]) == ["/chat"]
    with pytest.raises(Exception):
        c.predict("bundled", "int8", 64, 0.6, True, False, "CPU", "optimum", False, api_name="/export_and_load")
    # Gradio still routes private events by name or index; the page's own check refuses them.
    args = ["bundled", "int8", 64, 0.6, True, False, "CPU", "optimum", False]
    started = httpx.post(f"{app.url}gradio_api/call/export_and_load", json={"data": args}, timeout=30)
    if started.status_code == 200:
        event = started.json()["event_id"]
        result = httpx.get(f"{app.url}gradio_api/call/export_and_load/{event}", timeout=60).text
        assert "error" in result and "locked" in result
    assert "int8" not in app.output() and app.output().count("Loaded:") == 1


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


@pytest.mark.server
@pytest.mark.slow
def test_bounded_load(app, alone):
    """Four users chat until 100 conversations are done: the server answers throughout,
    every finished conversation is complete and right, and memory stops growing after
    warm-up. A count, not a time: how many a minute is bench/concurrency.py's figure."""
    total = int(os.environ.get("PHI3UI_LOAD_CONVERSATIONS", 100))
    users, warmup = 4, 60
    finished = threading.Event()
    done: list[str] = []
    exact: list[bool] = []
    failures: list[str] = []
    lock = threading.Lock()
    rss: dict[str, int] = {}
    probes: list[int] = []

    def user(k: int) -> None:
        c = client(app)
        n = k
        while not finished.is_set():
            question = QUESTIONS[n % len(QUESTIONS)]
            n += 1
            try:
                job = c.submit(question, [], SHORT, api_name="/chat")
                streamed = list(job)
                answer = job.result()
            except Exception as exc:  # noqa: BLE001 - counted and reported
                failures.append(f"{question!r}: {exc}")
                finished.set()
                return
            if not answers(question, answer, alone) or not all(answer.startswith(s) for s in streamed):
                failures.append(f"{question!r}: got {answer!r}, expected {alone[question]!r}")
            with lock:
                done.append(question)
                exact.append(answer == alone[question])
                if len(done) == warmup:
                    rss["warm"] = rss_kb(app.process.pid)
                if len(done) >= total:
                    finished.set()

    def probe() -> None:  # the page is served while the users chat: one probe a second
        while not finished.wait(1):
            try:
                probes.append(urllib.request.urlopen(app.url, timeout=60).status)
            except OSError as exc:
                failures.append(f"page did not answer: {exc}")

    rss["start"] = rss_kb(app.process.pid)
    threads = [threading.Thread(target=user, args=(k,)) for k in range(users)] + [threading.Thread(target=probe)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=1800)  # a hang guard only
    finished.set()
    rss["end"] = rss_kb(app.process.pid)
    print(f"\nload: {len(done)} conversations ({sum(exact)} word for word as alone); RSS kB {rss}; "
          f"{len(probes)} page probes")
    assert not failures, failures[:5]
    assert len(done) >= total, f"only {len(done)} conversations finished"
    assert probes and set(probes) == {200}, "the page was not served while the users chatted"
    assert "warm" in rss
    growth_mb = (rss["end"] - rss["warm"]) / 1024
    assert growth_mb < 32, f"RSS grew {growth_mb:.0f} MB over {len(done) - warmup} conversations after warm-up"
    assert app.process.poll() is None


@pytest.mark.server
@pytest.mark.slow
def test_share_without_network_keeps_serving_and_warns(bundled):
    """The app's outbound HTTP goes to a proxy that is not there, so no share link is made
    whether or not this machine can reach the internet."""
    nowhere = "http://127.0.0.1:9"
    offline = {"HTTP_PROXY": nowhere, "HTTPS_PROXY": nowhere, "ALL_PROXY": nowhere,
               "NO_PROXY": "127.0.0.1,localhost"}
    app = AppProcess("--model", BUNDLED, "--share", env=offline).wait_ready()
    try:
        def warned() -> str:
            log = app.output()
            return log if "Could not make a public share link" in log else ""

        log = wait_until(warned, 300, "the warning that no share link was made", every_s=0.5)  # a hang guard
        assert "without --auth" in log
        assert urllib.request.urlopen(app.url, timeout=10).status == 200
        from gradio_client import Client

        reply = Client(app.url, verbose=False).predict("What is the capital of France?", [], 8, api_name="/chat")
        assert "Paris" in reply
    finally:
        app.stop()
