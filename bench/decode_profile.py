"""Where OpenVINO's decode time goes: per-operation-type time of one decode step.

Compiles the exported (stateful) model with PERF_COUNT on, reads a prompt, then runs
single-token steps and sums OpenVINO's profiling counters by layer type and kernel, so
the table shows how much of a token is matrix multiplication (and which kernel), how much
attention, and how much everything else.

    python bench/decode_profile.py FOLDER [--prop KEY=VALUE ...] [--steps 16]
"""

from __future__ import annotations

import argparse
import collections
import time
from pathlib import Path

import numpy as np


def profile(folder: Path, properties: dict, prompt_tokens: int, steps: int) -> tuple[float, list[tuple]]:
    """(wall ms per step, [(layer type, kernel, ms per step, share)]) over `steps` decode steps."""
    import openvino as ov

    core = ov.Core()
    compiled = core.compile_model(str(folder / "openvino_model.xml"), "CPU",
                                  {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1", "PERF_COUNT": "YES",
                                   **properties})
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--prop", action="append", default=[], help="KEY=VALUE, an OpenVINO CPU property")
    parser.add_argument("--prompt-tokens", type=int, default=200)
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--top", type=int, default=12)
    args = parser.parse_args()
    properties = dict(p.split("=", 1) for p in args.prop)
    wall, rows = profile(args.folder, properties, args.prompt_tokens, args.steps)
    print(f"{args.folder.name} {properties or ''}: {wall:.1f} ms per decode step (wall)")
    # Only shares are printed: summed per-node counters exceed the wall time (they appear
    # to accumulate across requests), so their absolute values are not per-step times.
    print("| layer type | kernel | share of profiled time |\n|---|---|---|")
    for node_type, kernel, _, share in rows[: args.top]:
        print(f"| {node_type} | {kernel} | {share:.0%} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
