"""How soon an answer ends when asked to: the figures tests/test_engines.py no longer times.

On the bundled model, for each local engine and `--runs` times:

- `stop`: Stop after the 5th streamed piece of a long answer; time from `stop()` to the end
  of the stream, also in tokens' time (the answer's own seconds per token);
- `close`: a reader that leaves after the first piece (`Answer.close()`, which waits for the
  generation to end);
- `slot_wait`: Stop for an answer waiting for the engine's only slot; time until its reader
  returns (the slot is still held by another answer).

    python -m bench.stop                  # both engines, 5 runs each
    python -m bench.stop --engines genai --runs 3

Prints a Markdown table and writes bench/results/stop.json. Not a test: tests/test_engines.py
checks that each of these ends the answer (tokens, slots, states), never how fast.
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time

from tests.app_process import ROOT

RESULTS = ROOT / "bench" / "results"
PROMPT = "Write a long story about a dragon."


def stop_after_five(engine) -> dict:
    from phi3ui.settings import GenerationSettings

    answer = engine.answer(engine.render([{"role": "user", "content": PROMPT}]), GenerationSettings(max_new_tokens=400))
    stopped_at = 0.0
    for pieces, _ in enumerate(answer, start=1):
        if pieces == 5:
            answer.stop()
            stopped_at = time.perf_counter()
    ended, stats = time.perf_counter(), answer.stats
    per_token = stats.total_s / max(stats.answer_tokens, 1)
    return {"ms": (ended - stopped_at) * 1000, "tokens": (ended - stopped_at) / per_token,
            "answer_tokens": stats.answer_tokens}


def close_after_one(engine) -> dict:
    from phi3ui.settings import GenerationSettings

    answer = engine.answer(engine.render([{"role": "user", "content": "Count from 1 to 500."}]),
                           GenerationSettings(max_new_tokens=500))
    next(iter(answer))
    start = time.perf_counter()
    answer.close()
    return {"ms": (time.perf_counter() - start) * 1000}


def stop_while_waiting(engine) -> dict:
    from phi3ui.settings import GenerationSettings

    prompt = engine.render([{"role": "user", "content": "Count from 1 to 500."}])
    first = engine.answer(prompt, GenerationSettings(max_new_tokens=500))
    reader = iter(first)
    next(reader)  # holds the only slot
    waiting = engine.answer(prompt, GenerationSettings(max_new_tokens=500))
    thread = threading.Thread(target=lambda: list(waiting))
    thread.start()
    while engine.slots.waiting == 0:
        time.sleep(0.001)
    start = time.perf_counter()
    waiting.stop()
    thread.join()
    took = time.perf_counter() - start
    first.close()
    return {"ms": took * 1000}


def main(argv: list[str] | None = None) -> int:
    from phi3ui.engines import load_engine
    from phi3ui.export import ensure_exported
    from phi3ui.settings import BUNDLED, LOCAL_ENGINES, RuntimeSettings

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engines", nargs="+", default=list(LOCAL_ENGINES), choices=list(LOCAL_ENGINES))
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args(argv)

    folder = ensure_exported(BUNDLED).folder
    results: dict[str, dict] = {}
    for name in args.engines:
        engine = load_engine(folder, RuntimeSettings(engine=name))
        runs = {kind: [measure(engine) for _ in range(args.runs)]
                for kind, measure in (("stop", stop_after_five), ("close", close_after_one),
                                      ("slot_wait", stop_while_waiting))}
        results[name] = {kind: {"median_ms": round(statistics.median(r["ms"] for r in rs), 1),
                                "max_ms": round(max(r["ms"] for r in rs), 1), "runs": rs}
                         for kind, rs in runs.items()}
        stops = runs["stop"]
        results[name]["stop"]["median_tokens"] = round(statistics.median(r["tokens"] for r in stops), 2)
        engine.close()
    print("| engine | Stop → end, ms (tokens' time) | close, ms | Stop while waiting, ms |")
    print("|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['stop']['median_ms']} ({r['stop']['median_tokens']}) | {r['close']['median_ms']} | "
              f"{r['slot_wait']['median_ms']} |")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "stop.json").write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
