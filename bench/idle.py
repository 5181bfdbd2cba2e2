"""What an app costs while nobody uses it, and what that saving costs a call.

Starts the app on the bundled model (genai engine), waits until it is ready and quiet, then:

- `idle`: the server process's CPU time over `--seconds`, as a share of one core;
- `call`: a one-token `/chat` call through gradio_client, `--calls` times one after another:
  the median time from the call to its answer (the queue's polling interval is part of it).

    python -m bench.idle                       # this checkout
    python -m bench.idle --root /tmp/before    # another checkout of phi3ui, to compare

Prints a Markdown row and adds the run to bench/results/idle.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import time
from pathlib import Path

from tests.app_process import ROOT, AppProcess, cpu_ticks

RESULTS = ROOT / "bench" / "results"
SETTLE_S = 5  # after /health says ok: the warm-up's leftovers and the first page config


def idle_share(app: AppProcess, seconds: float) -> float:
    """The app's CPU time over `seconds` of nobody using it, per second: 1.0 is one core."""
    start_ticks, start = cpu_ticks(app.process.pid), time.perf_counter()
    time.sleep(seconds)
    cpu_s = (cpu_ticks(app.process.pid) - start_ticks) / os.sysconf("SC_CLK_TCK")
    return cpu_s / (time.perf_counter() - start)


def call_ms(app: AppProcess, calls: int) -> list[float]:
    """Each one-token /chat call's time, from the call to its answer."""
    from gradio_client import Client

    client = Client(app.url, verbose=False)
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        client.predict("Say hi.", [], 1, api_name="/chat")
        times.append((time.perf_counter() - start) * 1000)
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=ROOT, help="the phi3ui checkout to start (default: this one)")
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--calls", type=int, default=30)
    args = parser.parse_args(argv)

    commit = subprocess.run(["git", "-C", str(args.root), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, check=True).stdout.strip()
    app = AppProcess("--model", "bundled", "--engine", "genai", root=args.root).wait_ready()
    try:
        time.sleep(SETTLE_S)
        idle = idle_share(app, args.seconds)
        calls = call_ms(app, args.calls)
    finally:
        app.stop()
    result = {"commit": commit, "idle_core_share": round(idle, 4), "seconds": args.seconds,
              "call_median_ms": round(statistics.median(calls), 1), "calls_ms": [round(t, 1) for t in calls],
              "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    print("| commit | idle app, % of a core | one-token /chat call, median ms |")
    print("|---|---|---|")
    print(f"| {commit} | {idle * 100:.1f} | {result['call_median_ms']} |")
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / "idle.json"
    kept = json.loads(path.read_text()) if path.exists() else []
    path.write_text(json.dumps([*kept, result], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
