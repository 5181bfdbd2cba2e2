"""The app's default runtime properties answer as the seed's do, on the bundled model.

engines.default_properties() is tuned for decode speed (bench/decode.py). A faster
setting must not cost answer quality: with greedy decoding, the same questions must get
the same answers as with the seed's properties (PERFORMANCE_HINT LATENCY, NUM_STREAMS 1,
nothing else). Where an answer differs, the difference must be small when measured: the
mean log-likelihood per token of the seed's answers, scored by each configuration.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from phi3ui.engines import Engine, default_properties, load_engine
from phi3ui.settings import GenerationSettings, RuntimeSettings, cache_root

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


# Questions whose greedy answer may differ under the app's defaults, each bounded by the
# log-likelihood test below. None today: the defaults are the seed's properties (with
# DYNAMIC_QUANTIZATION_GROUP_SIZE=128, questions 1, 2, 3 and 5 differed; see decode.md).
KNOWN_TO_DIFFER: set[str] = set()


def test_default_properties_give_the_seeds_greedy_answers(answers):
    assert all(answers["seed"]), "every question must get an answer"
    for question, seed, default in zip(QUESTIONS, answers["seed"], answers["default"]):
        if question not in KNOWN_TO_DIFFER:
            assert default == seed, f"{question!r}: the app's defaults answer differently from the seed's"


# --- where greedy answers differ: a measured difference ------------------------------------
def reference_answers(source: Path) -> tuple[list[list[int]], list[list[int]]]:
    """(prompt ids, answer ids): greedy answers of the unquantised fp32 model in torch, the
    closest thing to the true model here, so neither OpenVINO configuration is favoured."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    prompts, answers = [], []
    for question in QUESTIONS:
        text = tokenizer.apply_chat_template([{"role": "user", "content": question}], tokenize=False,
                                             add_generation_prompt=True)
        ids = tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids
        out = model.generate(ids, max_new_tokens=ANSWER_TOKENS, do_sample=False, eos_token_id=2, pad_token_id=2)
        prompts.append(ids[0].tolist())
        answers.append(out[0, ids.shape[1]:].tolist())
    return prompts, answers


def mean_log_likelihood(folder: Path, properties: dict, prompts: list[list[int]], answers: list[list[int]]) -> float:
    """Mean log-probability per answer token that the OpenVINO model gives the reference
    answers (teacher forcing, one forward pass per question)."""
    import torch
    from optimum.intel import OVModelForCausalLM

    model = OVModelForCausalLM.from_pretrained(folder, device="CPU", ov_config=properties)
    total, count = 0.0, 0
    for prompt, answer in zip(prompts, answers):
        ids = torch.tensor([prompt + answer])
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0].float()
        logprobs = torch.log_softmax(logits[len(prompt) - 1: -1], dim=-1)
        total += logprobs.gather(1, torch.tensor(answer)[:, None]).sum().item()
        count += len(answer)
    return total / count


# Measured on the bundled model (bench/results/decode.md): mean log-likelihood per token of
# the fp32 reference answers, seed properties -0.679, DYNAMIC_QUANTIZATION_GROUP_SIZE=128
# -0.672 (f32 -0.687, group 0 -0.673: property changes move it by about 0.01; the
# channel-wise int4 export moves it to -1.376). The defaults must not score worse than the
# seed's by more than that noise.
LOG_LIKELIHOOD_MARGIN = 0.02


def test_default_properties_score_reference_answers_as_well_as_the_seeds(bundled):
    prompts, answers = reference_answers(cache_root() / "sources" / "SmolLM2-135M-Instruct")
    seed = mean_log_likelihood(bundled.folder, SEED_PROPERTIES, prompts, answers)
    default = mean_log_likelihood(bundled.folder, {k: v for k, v in default_properties().items()
                                                   if k != "CACHE_DIR"}, prompts, answers)
    print(f"mean log-likelihood per token of fp32 reference answers: seed {seed:.4f}, default {default:.4f}")
    assert default >= seed - LOG_LIKELIHOOD_MARGIN
