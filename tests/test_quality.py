"""The app's default runtime properties answer as the seed's do, on the bundled model.

engines.default_properties() is tuned for decode speed (bench/decode.py). A faster
setting must not cost answer quality: with greedy decoding, the same questions must get
the same answers as with the seed's properties (PERFORMANCE_HINT LATENCY, NUM_STREAMS 1,
nothing else). Where an answer differs, the difference must be small when measured: the
mean log-likelihood per token of the seed's answers, scored by each configuration.
"""

from __future__ import annotations

import pytest

from phi3ui.engines import Engine, default_properties, load_engine
from phi3ui.settings import GenerationSettings, RuntimeSettings

pytestmark = pytest.mark.slow

SEED_PROPERTIES = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1"}
QUESTIONS = [
    "What is the capital of France?",
    "Explain what a prime number is in two sentences.",
    "Write a Python function that returns the square of a number.",
    "Give me three tips for sleeping better.",
    "Translate 'good morning' into Spanish and German.",
    "Why is the sky blue?",
]
ANSWER_TOKENS = 64


def seed_runtime() -> RuntimeSettings:
    """The seed's properties: every key the app's defaults add is unset (None), except the
    model cache, which changes load time and nothing else."""
    unset = {key: None for key in default_properties() if key not in SEED_PROPERTIES and key != "CACHE_DIR"}
    return RuntimeSettings(engine="genai", properties={**unset, **SEED_PROPERTIES})


def greedy_answers(engine: Engine) -> list[str]:
    settings = GenerationSettings(max_new_tokens=ANSWER_TOKENS)
    answers = []
    for question in QUESTIONS:
        prompt = engine.render([{"role": "user", "content": question}])
        answers.append([c for c in engine.stream(prompt, settings)][-1].text)
    return answers


@pytest.fixture(scope="module")
def answers(bundled) -> dict[str, list[str]]:
    """Greedy answers with the seed's properties and with the app's defaults, one engine
    at a time."""
    found = {}
    for name, runtime in (("seed", seed_runtime()), ("default", RuntimeSettings(engine="genai"))):
        engine = load_engine(bundled.folder, runtime)
        found[name] = greedy_answers(engine)
        engine.close()
        del engine
    return found


def test_seed_runtime_really_is_the_seed(bundled):
    engine = load_engine(bundled.folder, seed_runtime())
    assert {k: v for k, v in engine.properties.items() if k != "CACHE_DIR"} == SEED_PROPERTIES


def test_default_properties_give_the_seeds_greedy_answers(answers):
    assert all(answers["seed"]), "every question must get an answer"
    for question, seed, default in zip(QUESTIONS, answers["seed"], answers["default"]):
        assert default == seed, f"{question!r}: the app's defaults answer differently from the seed's"
