"""bench/decode.py's turns: configurations in one process, a token each in turn, paired.

Real genai on the bundled model (llama-cpp-python is a benchmark dependency only, so two
genai configurations stand in for llama.cpp and a contender). Not a timed test: it checks
what is measured and how it is paired, never how fast.
"""

from __future__ import annotations

import pytest

from bench.decode import (
    CONFIGS,
    GenaiRunner,
    GenaiStepper,
    prompt_ids,
    run_in_turns,
    runtime_spec,
)

pytestmark = [pytest.mark.slow, pytest.mark.bench]

NEW_TOKENS = 6


def spec(name: str) -> dict:
    return {"name": name, **runtime_spec(CONFIGS[name], "bundled")[0]}


def test_stepped_genai_makes_the_same_tokens_as_the_apps_pipeline(bundled):
    """The stepper is measured in turns in place of LLMPipeline: same path, same answer."""
    ids = prompt_ids(bundled.folder)[0][0]
    stepped = list(GenaiStepper(spec("seed")).tokens(ids, NEW_TOKENS))
    assert stepped == GenaiRunner(spec("seed")).generate(ids, NEW_TOKENS, lambda: None)
    assert len(stepped) == NEW_TOKENS


def test_turns_time_every_step_and_pair_it_with_the_references(bundled):
    prompts, warmup = prompt_ids(bundled.folder, repeats=2)
    results = run_in_turns({"configs": [spec("seed"), spec("f32")], "prompt_ids": prompts, "warmup_ids": warmup,
                            "new_tokens": NEW_TOKENS, "warmup_tokens": 2, "pause_s": 0.01})["results"]
    reference, other = results
    steps = len(prompts) * (NEW_TOKENS - 1)
    for result in results:
        assert len(result["steps_ms"]) == steps and all(s > 0 for s in result["steps_ms"])
        assert len(result["ttft_runs_s"]) == len(prompts) and all(t > 0 for t in result["ttft_runs_s"])
        assert result["steps_paired"] == steps
        assert result["properties_used"]["PERFORMANCE_HINT"] == "LATENCY"
    assert reference["step_ratio_median"] == 1.0 and reference["steps_faster"] == 0
    ratios = sorted(a / b for a, b in zip(other["steps_ms"], reference["steps_ms"]))
    assert other["step_ratio_median"] == pytest.approx((ratios[steps // 2 - 1] + ratios[steps // 2]) / 2)
    assert other["properties_used"]["INFERENCE_PRECISION_HINT"] == "f32"
