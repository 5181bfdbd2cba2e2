"""Total tokens per second with 1, 2 and 4 users chatting at once, as the clients see it.

Starts the app (`python app.py --model bundled --engine genai --concurrency 4`), then for
each user count runs that many `gradio_client` sessions at once, each sending `--rounds`
different questions through `/chat` (greedy, `--tokens` max new tokens). Answer tokens are
counted by re-encoding the answers with the model's own tokenizer. Total tokens/s = all
answer tokens / wall time of the round; with continuous batching it should grow with users,
where one-at-a-time serving stays flat.

    python -m bench.concurrency                    # bundled model, 1/2/4 users
    python -m bench.concurrency --users 1 2 --rounds 2 --tokens 16   # smoke run

Writes bench/results/concurrency.json and bench/results/concurrency.md. Not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from tests.app_process import AppProcess

ROOT = Path(__file__).resolve().parent.parent

TOPICS = ["a cat", "a ship", "a tree", "a robot", "a city", "a river", "a mountain", "a clock",
          "a garden", "a train", "a lighthouse", "a violin"]


@dataclass(frozen=True)
class Round:
    """One user count: what all the sessions together produced, and how fast."""

    users: int
    requests: int
    answer_tokens: int
    wall_s: float
    total_tokens_per_s: float
    mean_ttft_s: float
    mean_request_s: float


def ask(client, question: str, tokens: int) -> tuple[str, float, float]:
    """The answer, time to its first streamed text, and total time."""
    start = time.monotonic()
    job = client.submit(question, [], tokens, api_name="/chat")
    first = None
    for _ in job:
        first = first or time.monotonic()
    end = time.monotonic()
    return job.result(), (first or end) - start, end - start


def run_round(urls: list[str], users: int, rounds: int, tokens: int, count) -> Round:
    """`users` sessions at once, user k on `urls[k % len(urls)]` (as a load balancer would)."""
    from gradio_client import Client

    clients = [Client(urls[k % len(urls)], verbose=False) for k in range(users)]
    results: list[tuple[str, float, float]] = []
    lock = threading.Lock()

    def user(k: int) -> None:
        for r in range(rounds):
            question = f"Write a story about {TOPICS[(k * rounds + r) % len(TOPICS)]}."
            result = ask(clients[k], question, tokens)
            with lock:
                results.append(result)

    threads = [threading.Thread(target=user, args=(k,)) for k in range(users)]
    start = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.monotonic() - start
    answer_tokens = sum(count(text) for text, _, _ in results)
    return Round(users, len(results), answer_tokens, round(wall, 3), round(answer_tokens / wall, 2),
                 round(statistics.mean(r[1] for r in results), 3), round(statistics.mean(r[2] for r in results), 3))


def markdown(rounds: list[Round], command: str, app_command: str, meta: dict) -> str:
    lines = [
        "## Concurrent users (continuous batching)", "",
        f"Made by `{command}` against `{app_command}` on {meta['machine']}. Each user sends "
        f"{meta['rounds']} different questions one after another (greedy, at most {meta['tokens']} "
        "new tokens); all users at once. Total tokens/s = all answer tokens / wall time, as the "
        "`gradio_client` sessions see it (HTTP and streaming included).", "",
        "| users | requests | answer tokens | wall s | total tokens/s | mean TTFT s | mean request s |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [f"| {r.users} | {r.requests} | {r.answer_tokens} | {r.wall_s:.1f} | {r.total_tokens_per_s:.1f} | "
              f"{r.mean_ttft_s:.2f} | {r.mean_request_s:.2f} |" for r in rounds]
    base = rounds[0].total_tokens_per_s
    lines += ["", "Speed-up over one user: " + ", ".join(
        f"{r.users} users ×{r.total_tokens_per_s / base:.2f}" for r in rounds[1:]) + ".", ""]
    return "\n".join(lines)


def parse_load_args(prog: str, description: str, argv: list[str] | None) -> argparse.Namespace:
    """The load both this benchmark and bench/scale_out.py put on the app."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--users", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--rounds", type=int, default=3, help="questions per user")
    parser.add_argument("--tokens", type=int, default=64, help="max new tokens per answer")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    return parser.parse_args(argv)


def bundled_token_counter() -> Callable[[str], int]:
    """Answer tokens as the bundled model's own tokenizer counts them."""
    import openvino_genai as ov_genai

    from phi3ui.export import ensure_exported
    from phi3ui.settings import BUNDLED

    tokenizer = ov_genai.Tokenizer(str(ensure_exported(BUNDLED).folder))

    def count(text: str) -> int:
        return int(tokenizer.encode(text, add_special_tokens=False).input_ids.shape[1]) if text else 0

    return count


def main(argv: list[str] | None = None) -> int:
    args = parse_load_args("python -m bench.concurrency", __doc__.splitlines()[0], argv)
    count = bundled_token_counter()
    from phi3ui.settings import BUNDLED

    app_args = ["--model", BUNDLED, "--engine", "genai", "--concurrency", str(max(args.users))]
    app = AppProcess(*app_args).wait_ready()
    try:
        run_round([app.url], 1, 1, 8, count)  # warm-up: compiled model, first request paths
        rounds = []
        for users in args.users:
            result = run_round([app.url], users, args.rounds, args.tokens, count)
            print(result, flush=True)
            rounds.append(result)
    finally:
        app.stop()
    command = "python -m bench.concurrency " + shlex.join(argv if argv is not None else sys.argv[1:])
    meta = {"machine": f"{os.cpu_count()} cores",
            "rounds": args.rounds, "tokens": args.tokens}
    args.out.mkdir(parents=True, exist_ok=True)
    app_command = "python app.py " + shlex.join(app_args)
    (args.out / "concurrency.json").write_text(json.dumps(
        {"command": command.strip(), "app": app_command, **meta, "rounds": [asdict(r) for r in rounds]}, indent=2))
    (args.out / "concurrency.md").write_text(markdown(rounds, command.strip(), app_command, meta))
    print((args.out / "concurrency.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
