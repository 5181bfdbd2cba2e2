"""The app's default runtime properties answer as the seed's do, on the bundled model.

engines.default_properties() is tuned for decode speed (bench/decode.py). A faster
setting must not cost answer quality: with greedy decoding, the same questions must get
the same answers as with the seed's properties (PERFORMANCE_HINT LATENCY, NUM_STREAMS 1,
nothing else). Where an answer differs, the difference must be small when measured: the
mean log-likelihood per token of the seed's answers, scored by each configuration.
"""

from __future__ import annotations

import pytest

from decode import CONFIGS, SEED, genai_properties
from quality import QUESTIONS, greedy_answers, mean_log_likelihood, reference_answers

from phi3ui.bundled import hf_folder
from phi3ui.engines import default_properties, load_engine, without_cache
from phi3ui.settings import RuntimeSettings

pytestmark = pytest.mark.slow

def seed_runtime() -> RuntimeSettings:
    """The seed's properties: every key the app's defaults add is unset (None), except the
    model cache, which changes load time and nothing else (bench/decode.py's "seed")."""
    return RuntimeSettings(engine="genai", properties=genai_properties(CONFIGS["seed"]))


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
    assert without_cache(engine.properties) == SEED


# Questions whose greedy answer may differ under the app's defaults, each bounded by the
# log-likelihood test below. None today: the defaults are the seed's properties (with
# DYNAMIC_QUANTIZATION_GROUP_SIZE=128, questions 1, 2, 3 and 5 differed; see decode.md).
KNOWN_TO_DIFFER: set[str] = set()


def test_default_properties_give_the_seeds_greedy_answers(answers):
    assert all(answers["seed"]), "every question must get an answer"
    for question, seed, default in zip(QUESTIONS, answers["seed"], answers["default"]):
        if question not in KNOWN_TO_DIFFER:
            assert default == seed, f"{question!r}: the app's defaults answer differently from the seed's"


# Measured on the bundled model (bench/results/decode.md): mean log-likelihood per token of
# the fp32 reference answers, seed properties -0.679, DYNAMIC_QUANTIZATION_GROUP_SIZE=128
# -0.672 (f32 -0.687, group 0 -0.673: property changes move it by about 0.01; the
# channel-wise int4 export moves it to -1.376). The defaults must not score worse than the
# seed's by more than that noise.
LOG_LIKELIHOOD_MARGIN = 0.02


def test_default_properties_score_reference_answers_as_well_as_the_seeds(bundled):
    prompts, answers = reference_answers(hf_folder())
    seed = mean_log_likelihood(bundled.folder, SEED, prompts, answers)
    default = mean_log_likelihood(bundled.folder, without_cache(default_properties()), prompts, answers)
    print(f"mean log-likelihood per token of fp32 reference answers: seed {seed:.4f}, default {default:.4f}")
    assert default >= seed - LOG_LIKELIHOOD_MARGIN
