"""The benchmarks: `python -m bench.bench` runs end to end in its quick mode and writes what
it promises, and what bench/ publishes stays reproducible (the commands quoted still parse,
README holds the current results).

Not a timed test: it checks that every figure is there and positive, never how large.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
@pytest.mark.bench
def test_quick_benchmark_writes_json_plot_and_section(bundled, tmp_path: Path) -> None:
    command = [sys.executable, "-m", "bench.bench", "--turns", "2", "--tokens", "4",
               "--no-http", "--bandwidth-mb", "256", "--out", str(tmp_path)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]

    report = json.loads((tmp_path / "bundled.json").read_text())
    assert (tmp_path / "bundled.png").stat().st_size > 0
    section = (tmp_path / "README-section.md").read_text()
    assert "python -m bench.bench --turns 2 --tokens 4" in section and "bundled.png" in section

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


# --- fast checks of what the benchmarks publish ---------------------------------------------
def published_commands() -> list[str]:
    """Every `python -m bench.decode` command quoted in bench/README.md, bench/NOTES.md and
    the sessions decode.json records."""
    texts = [(ROOT / "bench" / "README.md").read_text(), (ROOT / "bench" / "NOTES.md").read_text()]
    sessions = json.loads((ROOT / "bench" / "results" / "decode.json").read_text())["sessions"]
    commands = [line.strip() for text in texts for line in text.splitlines()
                if line.strip().startswith("python -m bench.decode --")]
    return commands + [session["command"] for session in sessions]


@pytest.mark.bench
def test_every_published_decode_command_still_parses():
    """The figures stay reproducible: each quoted command names flags and configurations
    bench.decode still has."""
    from bench.decode import parse_args

    commands = published_commands()
    assert len(commands) > 20
    for command in commands:
        words = shlex.split(command)
        assert words[:3] == ["python", "-m", "bench.decode"], command
        args = parse_args(words[3:])  # exits on an unknown flag or configuration
        assert args.configs, command


@pytest.mark.bench
def test_decode_lists_its_configurations_as_a_module():
    done = subprocess.run([sys.executable, "-m", "bench.decode", "--list"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split()[0] == "llama" and "asym-cw-r1" in done.stdout.split()


@pytest.mark.bench
def test_the_benchmark_page_holds_the_current_results():
    """bench/README.md is what `python -m bench.readme` makes of bench/results and bench/NOTES.md."""
    from bench.readme import PAGE, filled

    page = PAGE.read_text()
    assert filled(page) == page


def test_the_readme_is_for_users():
    """The Spaces front matter, the two commands first, at most 250 lines, and every link to
    a file of the repository or a heading of the page leads somewhere."""
    readme = (ROOT / "README.md").read_text()
    assert readme.startswith("---\ntitle: phi3ui\n")  # the Hugging Face Spaces front matter
    assert len(readme.splitlines()) <= 250
    assert readme.index("bash scripts/install.sh && python app.py") < readme.index("## ")
    for page in (ROOT / "README.md", ROOT / "docs" / "api.md", ROOT / "docs" / "serving.md", ROOT / "bench" / "README.md"):
        text = page.read_text()
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if target.startswith("http"):
                continue
            path, _, anchor = target.partition("#")
            linked = (page.parent / path).resolve() if path else page
            assert linked.exists(), f"{page.name}: {target}"
            if anchor and linked.suffix == ".md":
                assert anchor in headings(linked.read_text()), f"{page.name}: {target}"


def headings(markdown: str) -> set[str]:
    """GitHub's anchors for the headings of a Markdown page."""
    return {re.sub(r"[^\w\- ]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
            for line in markdown.splitlines() if line.startswith("#")}
