"""One client bursts requests at a public server; how long does another client wait?

Starts the app as a public demo starts it and, on each door, lets one or two "flooders"
send 10 requests at once (each asking for a long answer). Once the flood is answering, a
newcomer asks a short question. Its time to first text is compared with the same question
asked with nobody else on the server. Setups:

- `spaces`: as a Space starts it (`SPACE_ID` set, defaults only, an API key for /v1);
- `share`: the defaults `--share` gives (`--share` itself needs the internet for its tunnel),
  with `--trust-proxy` so the loopback clients are told apart by `X-Forwarded-For`, as a
  Space's proxy tells them apart.

    python -m bench.burst                       # both setups, the bundled model
    python -m bench.burst --app-dir /tmp/old    # the same against another checkout

Writes bench/results/burst-<label>.json and .md. Not a test (tests/test_burst.py checks the
same scenarios for answers, refusals and order, not for seconds).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tests.app_process import (  # noqa: F401
    DEFAULTS,
    KEY,
    QUESTION,
    ROOT,
    AppProcess,
    Reply,
    ask_chat,
    ask_v1,
)
from tests.waiting import wait_until

RESULTS = ROOT / "bench" / "results"
LONG = "Count from 1 to 300, writing each number in words on its own line."
BURST = 10
FLOOD_TOKENS = 256
NEWCOMER = "198.51.100.7"
FLOODERS = ("203.0.113.66", "203.0.113.77")


Ask = Callable[..., Reply]


@dataclass
class Burst:
    """One scenario: the flooders' replies and the newcomer's, with its time alone."""

    door: str
    flooders: int
    alone_s: float
    newcomer: Reply
    flood: list[Reply] = field(default_factory=list)

    @property
    def ratio(self) -> float:
        return (self.newcomer.ttft_s or float("inf")) / self.alone_s

    def within_target(self) -> bool:
        """The issue's bar: within 2x of alone, with 1 s of slack on sub-second times."""
        ttft = self.newcomer.ttft_s
        return ttft is not None and ttft <= max(2 * self.alone_s, self.alone_s + 1.0)

    def answered(self) -> list[Reply]:
        return [r for r in self.flood if r.error is None]

    def refused(self) -> list[Reply]:
        return [r for r in self.flood if r.error is not None]


def alone(ask: Ask, url: str, runs: int = 3) -> float:
    """The newcomer's median time to first text with nobody else on the server."""
    ask(url, NEWCOMER)  # warm-up
    times = [ask(url, NEWCOMER).ttft_s for _ in range(runs)]
    return statistics.median(t for t in times if t is not None)


def arrived(flood: list[Reply]) -> bool:
    """The flood has arrived: each of its requests has been refused, or is being answered
    (its first text came), or has ended."""
    return all(r.first is not None or r.ended for r in flood)


def burst(ask: Ask, url: str, door: str, flooders: int, alone_s: float, message: str = LONG,
          tokens: int = FLOOD_TOKENS) -> Burst:
    """Each flooder sends BURST requests for a long answer at once; once the flood has
    arrived and its admitted answers are being written, the newcomer asks. Returns when
    every request has ended."""
    flood = [Reply() for _ in range(flooders * BURST)]
    go = threading.Event()

    def flood_one(address: str, reply: Reply) -> None:
        go.wait()
        try:
            ask(url, address, message, tokens, reply)
        except Exception as exc:  # noqa: BLE001 - a request that broke is reported, never waited for
            reply.error, reply.ended = f"{type(exc).__name__}: {exc}", time.monotonic()

    threads = [threading.Thread(target=flood_one, args=(FLOODERS[i // BURST], reply), daemon=True)
               for i, reply in enumerate(flood)]
    for thread in threads:
        thread.start()
    go.set()
    wait_until(lambda: arrived(flood), 600, lambda: f"the flood to arrive: {[(r.text[:20], r.error) for r in flood]}",
               every_s=0.02)
    newcomer = ask(url, NEWCOMER)
    for thread in threads:
        thread.join(600)
    return Burst(door, flooders, alone_s, newcomer, flood)


SETUPS: dict[str, tuple[list[str], dict]] = {
    "spaces": ([], {"SPACE_ID": "phi3ui/burst", "PHI3UI_API_KEY": KEY}),
    "share": (["--rate-limit", "20", "--concurrency", "4", "--trust-proxy"],
              {"PHI3UI_API_KEY": KEY}),
}


def start(setup: str, app_dir: Path = ROOT, model: str = "bundled") -> AppProcess:
    args, env = SETUPS[setup]
    return AppProcess("--model", model, *args, env=env, root=app_dir).wait_ready()


def scenarios(url: str, repeats: int) -> list[list[Burst]]:
    """/chat with one flooder, /v1 with one and with two, each `repeats` times; alone times
    measured first."""
    alone_chat, alone_v1 = alone(ask_chat, url), alone(ask_v1, url)
    cases = [(ask_chat, "/chat", 1, alone_chat), (ask_v1, "/v1", 1, alone_v1), (ask_v1, "/v1", 2, alone_v1)]
    return [[burst(ask, url, door, flooders, alone_s) for _ in range(repeats)]
            for ask, door, flooders, alone_s in cases]


def table(label: str, results: dict[str, list[list[Burst]]]) -> str:
    """One row per scenario: the newcomer's times over the repeats (each run's own flood)."""
    lines = [f"**{label}**: newcomer's time to first text while flooders burst {BURST} requests each "
             f"({FLOOD_TOKENS} new tokens asked), against alone (median of 3).", "",
             "| setup | door | flooders | alone | during the burst (each run) | worst ratio | all within 2x (+1 s) "
             "| flood answered / refused (each run) |",
             "|---|---|---|---|---|---|---|---|"]
    for setup, cases in results.items():
        for runs in cases:
            first = runs[0]
            times = ", ".join(f"{r.newcomer.ttft_s:.2f}" if r.newcomer.ttft_s is not None else "refused" for r in runs)
            flood = ", ".join(f"{len(r.answered())}/{len(r.refused())}" for r in runs)
            lines.append(f"| {setup} | {first.door} | {first.flooders} | {first.alone_s:.2f} s | {times} s | "
                         f"{max(r.ratio for r in runs):.1f}x | {'yes' if all(r.within_target() for r in runs) else 'no'} "
                         f"| {flood} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--setups", nargs="+", default=list(SETUPS), choices=list(SETUPS))
    parser.add_argument("--app-dir", type=Path, default=ROOT, help="the checkout whose app.py to run")
    parser.add_argument("--label", default="", help="names the results (default: the checkout's folder)")
    parser.add_argument("--repeats", type=int, default=3, help="bursts per scenario")
    args = parser.parse_args(argv)
    label = args.label or ("this checkout" if args.app_dir == ROOT else args.app_dir.name)
    results: dict[str, list[list[Burst]]] = {}
    for setup in args.setups:
        app = start(setup, args.app_dir)
        try:
            results[setup] = scenarios(app.url, args.repeats)
        finally:
            app.stop()
        print(table(label, {setup: results[setup]}), flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    slug = "".join(c if c.isalnum() else "-" for c in label).strip("-")
    (RESULTS / f"burst-{slug}.json").write_text(json.dumps(
        {"label": label, "command": "python -m bench.burst " + " ".join(argv or sys.argv[1:]),
         "results": {s: [[{**asdict(b), "ratio": b.ratio} for b in runs] for runs in cases]
                     for s, cases in results.items()}},
        indent=2))
    (RESULTS / f"burst-{slug}.md").write_text(table(label, results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
