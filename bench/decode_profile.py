"""Where OpenVINO's decode time goes: per-operation-type time of one decode step.

Compiles the exported (stateful) model with PERF_COUNT on, reads a prompt, then runs
single-token steps and sums OpenVINO's profiling counters by layer type and kernel, so
the table shows how much of a token is matrix multiplication (and which kernel), how much
attention, and how much everything else.

    python -m bench.decode_profile FOLDER [--steps 16]
    python -m bench.decode_profile FOLDER --tokens-per-step 1,2,4,8

FOLDER is an exported model, e.g. one of ~/.cache/phi3ui/models/*/* (`python -m bench.bench
--phi3-shaped` makes the Phi-3-shaped ones). The model is compiled with the app's default
runtime properties (PERFORMANCE_HINT=LATENCY, NUM_STREAMS=1).

`--tokens-per-step` asks another question: what a step costs that reads several new tokens
at once (as a step checking prompt-lookup or draft guesses does) against a step that reads
one; the sizes take turns, so drift hits them alike.
"""

from __future__ import annotations

import argparse
import collections
import statistics
import time
from pathlib import Path

import numpy as np


def compiled_feeder(folder: Path, properties: dict | None = None):
    """(infer request, feed(ids, past)) for the stateful model, LATENCY and one stream."""
    import openvino as ov

    compiled = ov.Core().compile_model(str(folder / "openvino_model.xml"), "CPU",
                                       {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1", **(properties or {})})
    request = compiled.create_infer_request()
    names = {i.get_any_name() for i in compiled.inputs}

    def feed(ids: np.ndarray, past: int) -> None:
        length = ids.shape[1]
        inputs = {"input_ids": ids, "attention_mask": np.ones((1, past + length), dtype=np.int64)}
        if "position_ids" in names:
            inputs["position_ids"] = np.arange(past, past + length, dtype=np.int64)[None]
        if "beam_idx" in names:
            inputs["beam_idx"] = np.zeros(1, dtype=np.int32)
        request.infer(inputs)

    return request, feed


def profile(folder: Path, prompt_tokens: int, steps: int) -> tuple[float, list[tuple]]:
    """(wall ms per step, [(layer type, kernel, ms per step, share)]) over `steps` decode steps."""
    request, feed = compiled_feeder(folder, {"PERF_COUNT": "YES"})
    rng = np.random.default_rng(0)
    request.reset_state()
    feed(rng.integers(100, 10000, (1, prompt_tokens)), 0)
    feed(np.array([[42]]), prompt_tokens)  # first decode step: not counted
    totals: dict[tuple, float] = collections.defaultdict(float)
    wall = 0.0
    for step in range(steps):
        start = time.perf_counter()
        feed(np.array([[int(rng.integers(100, 10000))]]), prompt_tokens + 1 + step)
        wall += time.perf_counter() - start
        for info in request.profiling_info:
            totals[(info.node_type, info.exec_type)] += info.real_time.total_seconds() * 1000
    summed = sum(totals.values())
    rows = sorted(((t, k, ms / steps, ms / summed) for (t, k), ms in totals.items()), key=lambda r: -r[2])
    return wall / steps * 1000, rows


def step_costs(folder: Path, prompt_tokens: int, steps: int, sizes: list[int],
               pause_s: float = 0.05) -> dict[int, float]:
    """Median wall ms of a step that reads `size` new tokens, for each size, in turns."""
    _, feed = compiled_feeder(folder)
    rng = np.random.default_rng(0)
    past = 0

    def timed(size: int) -> float:
        nonlocal past
        ids = rng.integers(100, 10000, (1, size))
        start = time.perf_counter()
        feed(ids, past)
        past += size
        return (time.perf_counter() - start) * 1000

    timed(prompt_tokens)
    for size in sizes:  # each shape's first run compiles it: not counted
        timed(size)
    times: dict[int, list[float]] = {size: [] for size in sizes}
    for _ in range(steps):
        for size in sizes:
            time.sleep(pause_s)
            times[size].append(timed(size))
    return {size: statistics.median(series) for size, series in times.items()}


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.decode_profile", description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--prompt-tokens", type=int, default=200)
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--top", type=int, default=12)
    parser.add_argument("--tokens-per-step", help="comma-separated sizes: the cost of reading that many tokens a step")
    args = parser.parse_args()
    if args.tokens_per_step:
        sizes = [int(n) for n in args.tokens_per_step.split(",")]
        costs = step_costs(args.folder, args.prompt_tokens, args.steps, sizes)
        print(f"{args.folder.name}: a step reading n new tokens after a "
              f"{args.prompt_tokens}-token prompt, median of {args.steps} in turns")
        print("| new tokens in the step | ms per step | ÷ one token | ms per token |\n|---|---|---|---|")
        for size, ms in costs.items():
            print(f"| {size} | {ms:.1f} | {ms / costs[sizes[0]]:.2f} | {ms / size:.1f} |")
        return 0
    wall, rows = profile(args.folder, args.prompt_tokens, args.steps)
    print(f"{args.folder.name}: {wall:.1f} ms per decode step (wall)")
    # Only shares are printed: summed per-node counters exceed the wall time (they appear
    # to accumulate across requests), so their absolute values are not per-step times.
    print("| layer type | kernel | share of profiled time |\n|---|---|---|")
    for node_type, kernel, _, share in rows[: args.top]:
        print(f"| {node_type} | {kernel} | {share:.0%} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
