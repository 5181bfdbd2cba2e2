"""Long chats past the context window: time to first token per turn with the app's window
policy (phi3ui/window.py) and with the old leave-out-the-fewest one, in one process.

    python -m bench.long_chat                       # bundled model, 2048-token window, 40 turns
    python -m bench.long_chat --concurrency 2       # the same through the batching engine
    python -m bench.long_chat --phi3-shaped --context-window 1024 --turns 30 --max-new-tokens 16 --suffix=-phi3-shaped

Two conversations run through the real backend (`ChatBackend.prepare` + `start`), one after
the other: "before" leaves out the fewest
exchanges each turn (`cut_to=1.0`, the old policy), "after" cuts down to `--cut-to` of the
window and keeps that cut. Their messages differ from the first word on, so neither can
use the other's cached prefix. Not interleaved turn by turn: the one-user engine's KV cache
then kept neither conversation's prefix (measured: time to first token grew with the whole
prompt on both), which is not what one user of the app sees. Answers are greedy and forced to `--max-new-tokens` tokens.

openvino-genai reports no per-request prefix-cache hits, so "computed" tokens are the
prompt's tokens minus the longest start the engine read and wrote before (one earlier
prompt plus its answer, from the engine's token memory: `TokenMemory.remembered_tokens`): what the
prefix cache can skip. A least-squares fit of TTFT against it says how much of the time to
first token it explains. A turn "re-reads the window" when it computes more than a quarter
of the window.

Writes bench/results/long_chat{suffix}.json, .md and .png.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import shlex
import statistics
import sys
import time
from pathlib import Path

from bench.bench import build_phi3_shaped, cpu_name, phi3_source
from phi3ui.chat import ChatBackend
from phi3ui.settings import BUNDLED, GenerationSettings, Limits, RuntimeSettings

RESULTS = Path(__file__).resolve().parent / "results"
TOPICS = ["the tides", "volcanoes", "honey bees", "the moon", "glaciers", "coral reefs", "owls", "deserts",
          "lightning", "rainforests", "comets", "salt", "bridges", "maple trees", "penguins", "clouds"]


def message(tag: str, turn: int) -> str:
    """About 70 tokens, different for each conversation from the first word on."""
    topic = TOPICS[(turn * (3 if tag == "A" else 5)) % len(TOPICS)]
    return (f"{tag}{turn}: Conversation {tag}, turn {turn}. Tell me something new about {topic}. "
            f"Keep it to a few sentences, plain words, no lists, and do not repeat what you said before. "
            f"Mention one number if you can, and say why {topic} matter to people who live nearby.")


def run_turn(backend: ChatBackend, cut_to: float, history: list[dict], text: str,
             settings: GenerationSettings) -> dict:
    backend.limits = dataclasses.replace(backend.limits, window_cut_to=cut_to)
    started = time.perf_counter()
    fitted = backend.prepare(history, text, settings)
    fit_s = time.perf_counter() - started
    reused = backend.engine.memory.remembered_tokens(fitted.prompt.text)
    answer = backend.start(fitted, settings)
    reply = answer.text()
    stats = answer.stats
    history += [{"role": "user", "content": text}, {"role": "assistant", "content": reply}]
    return {"prompt_tokens": fitted.prompt_tokens, "dropped": fitted.dropped_exchanges,
            "computed": max(0, fitted.prompt_tokens - reused), "ttft_s": stats.ttft_s,
            "answer_tokens": stats.answer_tokens, "tokens_per_s": stats.tokens_per_s, "fit_ms": fit_s * 1000}


def summarize(turns: list[dict], window_size: int) -> dict:
    first = next((i for i, t in enumerate(turns) if t["dropped"]), None)
    for i, t in enumerate(turns):
        t["rereads"] = t["computed"] > window_size / 4 and i > 0
    if first is None:
        return {"first_overflow": None}
    before = [t["ttft_s"] for t in turns[1:first]]  # turn 0 is the chat's first: all of it is new
    after = turns[first:]
    rereads = sum(t["rereads"] for t in after)
    return {
        "first_overflow": first,
        "median_ttft_before_s": statistics.median(before),
        "median_ttft_after_s": statistics.median(t["ttft_s"] for t in after),
        "ratio": statistics.median(t["ttft_s"] for t in after) / statistics.median(before),
        "turns_after": len(after),
        "rereads_after": rereads,
        "reread_share": rereads / len(after),
        "median_computed_after": statistics.median(t["computed"] for t in after),
        "mean_prompt_after": statistics.fmean(t["prompt_tokens"] for t in after),
    }


def ttft_fit(runs: dict) -> dict:
    """TTFT = a + b * computed tokens, least squares over every turn but each chat's first."""
    points = [(t["computed"], t["ttft_s"]) for turns in runs.values() for t in turns[1:]]
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    b = sum((x - mx) * (y - my) for x, y in points) / sxx
    a = my - b * mx
    ss_res = sum((y - a - b * x) ** 2 for x, y in points)
    ss_tot = sum((y - my) ** 2 for _, y in points)
    return {"a_s": a, "ms_per_token": b * 1000, "r2": 1 - ss_res / ss_tot, "points": n}


def table(runs: dict, summaries: dict, window_size: int) -> str:
    names = list(runs)
    head = "| turn | " + " | ".join(f"{n}: prompt / computed / left out / TTFT s" for n in names) + " |"
    lines = [head, "|---|" + "---|" * len(names)]
    for i in range(len(runs[names[0]])):
        cells = []
        for n in names:
            t = runs[n][i]
            mark = " ⟳" if t["rereads"] else ""
            cells.append(f"{t['prompt_tokens']} / {t['computed']} / {t['dropped']} / {t['ttft_s']:.2f}{mark}")
        lines.append(f"| {i} | " + " | ".join(cells) + " |")
    out = ["| policy | first overflow (turn) | median TTFT before it | median TTFT after | ratio (target ≤ 1.5) "
           "| turns after that re-read the window (target ≤ 1 in 4) | median computed tokens after |",
           "|---|---|---|---|---|---|---|"]
    for n in names:
        s = summaries[n]
        if s["first_overflow"] is None:
            out.append(f"| {n} | never | | | | | |")
            continue
        out.append(f"| {n} | {s['first_overflow']} | {s['median_ttft_before_s']:.2f} s | "
                   f"{s['median_ttft_after_s']:.2f} s | {s['ratio']:.2f}× | {s['rereads_after']} of "
                   f"{s['turns_after']} ({s['reread_share']:.0%}) | {s['median_computed_after']:.0f} |")
    legend = f"⟳: the turn computed more than a quarter of the {window_size}-token window."
    return "\n".join(out) + f"\n\n{legend}\n\n" + "\n".join(lines) + "\n"


def plot(runs: dict, window_size: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6.5), sharex=True)
    for name, turns in runs.items():
        x = range(len(turns))
        top.plot(x, [t["ttft_s"] for t in turns], marker="o", ms=3, label=name)
        bottom.plot(x, [t["computed"] for t in turns], marker="o", ms=3, label=f"{name}: computed")
        bottom.plot(x, [t["prompt_tokens"] for t in turns], ls=":", label=f"{name}: prompt")
    top.set_ylabel("time to first token (s)")
    top.set_title(f"Long chat past a {window_size}-token window")
    top.legend()
    bottom.axhline(window_size, color="grey", lw=0.8)
    bottom.set_ylabel("tokens")
    bottom.set_xlabel("turn")
    bottom.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.long_chat", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=BUNDLED)
    parser.add_argument("--phi3-shaped", action="store_true",
                        help="Phi-3-mini-4k-instruct's shape and tokenizer, random weights (bench.bench builds it)")
    parser.add_argument("--engine", default="genai")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--context-window", type=int, default=2048)
    parser.add_argument("--turns", type=int, default=40)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--cut-to", type=float, default=Limits().window_cut_to)
    parser.add_argument("--suffix", default="", help="results go to bench/results/long_chat{suffix}.*")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    backend = ChatBackend(limits=Limits(context_window=args.context_window), concurrency=args.concurrency)
    if args.phi3_shaped:
        args.model = str(build_phi3_shaped(phi3_source()))
    load_start = time.perf_counter()
    loaded = backend.load(args.model, runtime=RuntimeSettings(engine=args.engine), progress=lambda _: None)
    load_s = time.perf_counter() - load_start
    settings = GenerationSettings(max_new_tokens=args.max_new_tokens, min_new_tokens=args.max_new_tokens)
    policies = {"before (cut_to=1.0)": (1.0, "A"), f"after (cut_to={args.cut_to:g})": (args.cut_to, "B")}
    runs: dict[str, list[dict]] = {name: [] for name in policies}
    histories: dict[str, list[dict]] = {name: [] for name in policies}
    load_before = os.getloadavg()[0]
    for name, (cut_to, tag) in policies.items():
        for turn in range(args.turns):
            record = run_turn(backend, cut_to, histories[name], message(tag, turn), settings)
            runs[name].append(record)
            print(f"turn {turn:2d} {name:22s} prompt {record['prompt_tokens']:5d} computed {record['computed']:5d} "
                  f"left out {record['dropped']:2d} TTFT {record['ttft_s']:.2f} s", flush=True)
    summaries = {name: summarize(turns, args.context_window) for name, turns in runs.items()}
    fit = ttft_fit(runs)
    machine = (f"{os.cpu_count()} cores, {cpu_name()}, load average {load_before:.1f} before and "
               f"{os.getloadavg()[0]:.1f} after (shared with other work)")
    command = shlex.join(["python", "-m", "bench.long_chat", *(sys.argv[1:] if argv is None else argv)])
    result = {"command": command, "model": loaded.describe(), "engine": loaded.engine.label, "load_s": load_s,
              "context_window": args.context_window, "max_new_tokens": args.max_new_tokens, "turns": args.turns,
              "cut_to": args.cut_to, "machine": machine, "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "summary": summaries, "ttft_fit": fit, "runs": runs}
    RESULTS.mkdir(exist_ok=True)
    base = RESULTS / f"long_chat{args.suffix}"
    base.with_suffix(".json").write_text(json.dumps(result, indent=1))
    md = (f"# Long chat past the window ({result['when']})\n\n```\n{command}\n```\n\n"
          f"{loaded.describe().splitlines()[0].strip()}; {args.turns} turns per policy, answers forced to "
          f"{args.max_new_tokens} tokens, greedy, one conversation after the other. Machine: {machine}.\n\n"
          f"TTFT ≈ {fit['a_s']:.2f} s + {fit['ms_per_token']:.2f} ms × computed tokens (least squares over "
          f"{fit['points']} turns, R² = {fit['r2']:.2f}).\n\n" + table(runs, summaries, args.context_window))
    base.with_suffix(".md").write_text(md)
    plot(runs, args.context_window, base.with_suffix(".png"))
    print(md.split("| turn |")[0])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
