"""bench/decode.py's pooled table: paired wins count rounds, medians pool every run."""

from __future__ import annotations

import pytest

from bench.decode import pooled_table, turns_table

pytestmark = pytest.mark.bench


def run(config: str, runtime: str, per_token: list[float], ttft: float) -> dict:
    return {"config": config, "runtime": runtime, "ms_per_token": sorted(per_token)[len(per_token) // 2],
            "ms_per_token_runs": per_token, "ttft_s": ttft}


def test_pooled_table_pairs_each_round_with_its_own_llama_run():
    session = {"rounds": 2, "runs": [
        run("llama", "llama", [10.0, 11.0, 12.0], 1.0), run("seed", "genai", [9.0, 9.5, 10.0], 0.2),
        run("llama", "llama", [20.0, 21.0, 22.0], 1.0), run("seed", "genai", [25.0, 26.0, 27.0], 0.3),
    ]}
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in pooled_table(session) if line.startswith("| `")}
    assert rows["`llama`"][0] == "16.0 (10.0–22.0)"
    # seed won the first round (9.5 < 11) and lost the second (26 > 21), though its pooled
    # median (17.5 against 16.0) is the worse one: the pairs, not the pool, say who was faster when.
    assert rows["`seed`"][2] == "1/2" and rows["`seed`"][1] == "1.09"
    assert rows["`seed`"][5] == "2/2"


def test_no_pooled_table_for_a_single_round():
    assert pooled_table({"rounds": 1, "runs": [run("llama", "llama", [1.0], 1.0)]}) == []


def test_turns_table_reports_each_configuration_against_the_reference():
    session = {"turns_pause_s": 0.05, "runs": [
        {"config": "llama", "runtime": "llama"},
        {"config": "fast", "runtime": "genai", "step_ratio_median": 0.91, "steps_faster": 40, "steps_paired": 62},
    ]}
    lines = turns_table(session)
    assert "50 ms untimed pause" in lines[0]
    assert lines[-2] == "| `fast` | 0.91 | 40/62 (65%) |"
    assert turns_table({"runs": []}) == []
