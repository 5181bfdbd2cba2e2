"""Prompt lookup: guessed tokens from the conversation, checked several at a time (genai)."""

from __future__ import annotations

import pytest

from phi3ui import server
from phi3ui.answer import Stats
from phi3ui.engines import load_engine
from phi3ui.settings import GenerationSettings, RuntimeSettings, SettingsError

PARAGRAPH = ("The garden behind our house is small but it gets a lot of sun in the afternoon. "
             "Last year we planted tomatoes, beans and lettuce, and the beans grew better than anything else.")
QUOTE = f"Repeat this paragraph exactly, word for word: {PARAGRAPH}"


def test_prompt_lookup_is_refused_on_the_optimum_engine():
    with pytest.raises(SettingsError, match="needs the genai engine"):
        RuntimeSettings(engine="optimum", prompt_lookup=True).validate()
    assert RuntimeSettings(engine="genai", prompt_lookup=True).validate().prompt_lookup


def test_prompt_lookup_flag_and_environment(monkeypatch):
    assert server.parse_args([]).prompt_lookup is False
    assert server.parse_args(["--prompt-lookup"]).prompt_lookup is True
    monkeypatch.setenv("PHI3UI_PROMPT_LOOKUP", "1")
    assert server.parse_args([]).prompt_lookup is True
    assert server.parse_args(["--no-prompt-lookup"]).prompt_lookup is False


def answer(engine, message: str, stop_after: int = 0, **settings) -> tuple[list[str], Stats]:
    """The answer's chunks and stats; with `stop_after`, Stop is pressed after that many chunks."""
    reply = engine.answer(engine.render([{"role": "user", "content": message}]), GenerationSettings(**settings))
    chunks: list[str] = []
    for chunk in reply:
        chunks.append(chunk)
        if len(chunks) == stop_after:
            reply.stop()
    return chunks, reply.stats


@pytest.fixture(scope="module", params=[1, 2], ids=["pipeline", "batching"])
def engines(bundled, request):
    """The bundled model with and without prompt lookup, on LLMPipeline (one at a time) and
    on the continuous-batching engine."""
    plain = load_engine(bundled.folder, RuntimeSettings(engine="genai"), concurrency=request.param)
    lookup = load_engine(bundled.folder, RuntimeSettings(engine="genai", prompt_lookup=True),
                         concurrency=request.param)
    yield plain, lookup
    plain.close()
    lookup.close()


@pytest.mark.slow
def test_a_quoting_answer_comes_several_tokens_a_step(engines):
    plain, lookup = engines
    assert lookup.label.startswith("genai + prompt lookup")
    plain_chunks, plain_stats = answer(plain, QUOTE, max_new_tokens=64)
    chunks, stats = answer(lookup, QUOTE, max_new_tokens=64)
    assert "".join(chunks) == stats.text and "\ufffd" not in stats.text
    assert "gets a lot of sun in the afternoon" in stats.text  # it did quote the paragraph
    assert stats.answer_tokens >= 15 and not stats.stopped
    # Each pipeline step hands over what it made at once: guessed tokens that were right
    # arrive together, so the same length of quote arrives in far fewer pieces.
    assert len(chunks) < 0.75 * len(plain_chunks), (len(chunks), len(plain_chunks), stats.answer_tokens)


@pytest.mark.slow
def test_prompt_lookup_samples_and_answers_questions(engines):
    _, lookup = engines
    assert "Paris" in answer(lookup, "What is the capital of France?", max_new_tokens=24)[1].text
    seeded = dict(temperature=0.8, top_p=0.95, top_k=40, max_new_tokens=24, seed=7)
    first = answer(lookup, "Name a colour.", **seeded)[1]
    assert first.text and answer(lookup, "Name a colour.", **seeded)[1].text == first.text


@pytest.mark.slow
def test_stop_ends_a_prompt_lookup_answer(engines):
    _, lookup = engines
    chunks, stats = answer(lookup, "Write a long story about a dragon.", stop_after=3, max_new_tokens=400)
    assert stats.stopped and "".join(chunks) == stats.text
    assert stats.answer_tokens < 40


@pytest.mark.server
@pytest.mark.slow
@pytest.mark.browser
def test_app_started_with_prompt_lookup_says_so_and_answers(bundled, browser):
    """The flag reaches the engine through the real server; the page names it."""
    from gradio_client import Client

    from tests.app_process import AppProcess
    from tests.browsing import model_info
    from phi3ui.settings import BUNDLED

    app = AppProcess("--model", BUNDLED, "--prompt-lookup").wait_ready()
    try:
        assert "genai + prompt lookup engine" in model_info(browser, app.url)
        reply = Client(app.url, verbose=False).predict(message=QUOTE, history=[], max_new_tokens=48,
                                                       api_name="/chat")
        assert "gets a lot of sun in the afternoon" in reply
    finally:
        app.stop()
