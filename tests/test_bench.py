"""bench/bench.py runs end to end in its quick mode and writes what it promises.

Not a timed test: it checks that every figure is there and positive, never how large.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_quick_benchmark_writes_json_plot_and_section(bundled, tmp_path: Path) -> None:
    command = [sys.executable, str(ROOT / "bench" / "bench.py"), "--turns", "2", "--tokens", "4",
               "--no-http", "--bandwidth-mb", "256", "--out", str(tmp_path)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]

    report = json.loads((tmp_path / "bundled.json").read_text())
    assert (tmp_path / "bundled.png").stat().st_size > 0
    section = (tmp_path / "README-section.md").read_text()
    assert "python bench/bench.py --turns 2 --tokens 4" in section and "bundled.png" in section

    assert report["turns"] == 2 and report["answer_tokens"] == 4 and report["http"] is None
    for key in ("weight_bytes", "limit_ms_per_token", "limit_tokens_per_s"):
        assert report[key] > 0, key
    assert report["bandwidth"]["gb_per_s"] > 0
    assert [e["engine"] for e in report["engines"]] == ["genai", "optimum"]
    for engine in report["engines"]:
        for key in ("peak_rss_mb", "decode_tokens_per_s", "fraction_of_bandwidth_limit", "cache_mb"):
            assert engine[key] > 0, (engine["engine"], key)
        assert sorted(s["cache"] for s in engine["starts"]) == ["cold", "none", "warm"]
        for start in engine["starts"]:
            for key in ("load_s", "first_token_s", "peak_rss_mb"):
                assert start[key] > 0, (engine["engine"], start["cache"], key)
        assert [t["turn"] for t in engine["turns"]] == [1, 2]
        for turn in engine["turns"]:
            assert turn["answer_tokens"] == 4, "min_new_tokens must force the answer length"
            assert turn["prompt_tokens"] > 0 and turn["ttft_s"] > 0 and turn["tokens_per_s"] > 0
        assert engine["turns"][1]["prompt_tokens"] > engine["turns"][0]["prompt_tokens"]
