"""Scale out on one machine: two front-end replicas sharing one engine process, against one
app with the model inside, under the concurrency benchmark's load.

- "one app": `python app.py --model bundled --engine genai --concurrency C`, as in
  bench/concurrency.py.
- "2 replicas + engine": an engine process (the same command) and two front ends
  `python app.py --engine openai --api-base http://127.0.0.1:<engine>/v1 --concurrency C`,
  the users spread over the two round robin, as a load balancer would.

Each user is a `gradio_client` session sending `--rounds` different questions through `/chat`
(greedy, `--tokens` max new tokens); answer tokens are counted with the model's own tokenizer.
Total tokens/s = all answer tokens / wall time. On one machine the replicas add processes that
share the same cores, so this shows what the extra hop costs, not what more machines would give.

    python -m bench.scale_out                        # 1, 2 and 4 users
    python -m bench.scale_out --users 2 --rounds 1 --tokens 16   # smoke run

Writes bench/results/scale_out.json and bench/results/scale_out.md. Not a test.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.concurrency import Round, bundled_token_counter, parse_load_args, run_round
from tests.app_process import AppProcess

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Setup:
    name: str
    rounds: list[Round]


def measure(urls: list[str], args, count) -> list[Round]:
    run_round(urls, len(urls), 1, 8, count)  # warm-up: every process's first request paths
    measured = []
    for users in args.users:
        result = run_round(urls, users, args.rounds, args.tokens, count)
        print(result, flush=True)
        measured.append(result)
    return measured


def markdown(setups: list[Setup], command: str, commands: dict[str, str], meta: dict) -> str:
    lines = [
        "## Scale out: two front ends sharing one engine", "",
        f"Made by `{command}` on {meta['machine']}. Each user sends {meta['rounds']} different questions one "
        f"after another (greedy, at most {meta['tokens']} new tokens); all users at once, through `/chat`. "
        "Total tokens/s = all answer tokens / wall time as the clients see it. Everything runs on this one "
        "machine, so the replicas share its cores with the engine: the table shows what the extra hop "
        "costs, not what more machines would add.", "",
        *[f"- {name}: `{cmd}`" for name, cmd in commands.items()], "",
        "| setup | users | requests | answer tokens | wall s | total tokens/s | mean TTFT s | mean request s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for setup in setups:
        lines += [f"| {setup.name} | {r.users} | {r.requests} | {r.answer_tokens} | {r.wall_s:.1f} | "
                  f"{r.total_tokens_per_s:.1f} | {r.mean_ttft_s:.2f} | {r.mean_request_s:.2f} |" for r in setup.rounds]
    one, two = setups
    lines += ["", "Replicas against one app, total tokens/s: " + ", ".join(
        f"{a.users} users ×{b.total_tokens_per_s / a.total_tokens_per_s:.2f}"
        for a, b in zip(one.rounds, two.rounds) if a.total_tokens_per_s) + ".", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_load_args("python -m bench.scale_out", __doc__.splitlines()[0], argv)
    count = bundled_token_counter()
    from phi3ui.settings import BUNDLED

    concurrency = str(max(args.users))
    model_args = ["--model", BUNDLED, "--engine", "genai", "--concurrency", concurrency]
    setups: list[Setup] = []
    app = AppProcess(*model_args).wait_ready()
    try:
        setups.append(Setup("one app", measure([app.url], args, count)))
    finally:
        app.stop()
    engine = AppProcess(*model_args).wait_ready()
    front_args = ["--engine", "openai", "--api-base", f"http://127.0.0.1:{engine.port}/v1",
                  "--concurrency", concurrency]
    fronts: list[AppProcess] = []
    try:
        fronts = [AppProcess(*front_args) for _ in range(2)]
        for front in fronts:
            front.wait_ready()
        setups.append(Setup("2 replicas + engine", measure([f.url for f in fronts], args, count)))
    finally:
        for front in fronts:
            front.stop()
        engine.stop()
    command = "python -m bench.scale_out " + shlex.join(argv if argv is not None else sys.argv[1:])
    commands = {"one app": "python app.py " + shlex.join(model_args),
                "engine": "python app.py " + shlex.join(model_args),
                "each replica": f"python app.py --engine openai --api-base http://127.0.0.1:<engine>/v1 "
                                f"--concurrency {concurrency}"}
    meta = {"machine": f"{os.cpu_count()} cores", "rounds": args.rounds, "tokens": args.tokens}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "scale_out.json").write_text(json.dumps(
        {"command": command.strip(), "commands": commands, **meta,
         "setups": [{"name": s.name, "rounds": [asdict(r) for r in s.rounds]} for s in setups]}, indent=2))
    (args.out / "scale_out.md").write_text(markdown(setups, command.strip(), commands, meta))
    print((args.out / "scale_out.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
