"""Answers as JSON, with and without the constraint: how many parse and fit their schema,
and what holding the tokens to the schema costs.

Starts the app on the bundled model and asks /v1 (the `openai` client, streamed) every
question of tests/json_cases.py twice, right after each other: once with the schema only in
the prompt (the instruction every case carries), once also as `response_format`. Greedy,
then sampled (temperature 0.7) with two seeds. An answer "parses" when `json.loads` takes it
as it is, "parses unfenced" when it does after a Markdown code fence around it is taken
off, and "fits" when it then validates against its schema (the `jsonschema` library, formats
checked). json_object is asked on its own questions (any JSON object fits).

Speed: decode time per token (first text to last, over the tokens after the first) and time
to first text, medians per mode, paired per question; a schema's first use includes its
grammar compile.

    python -m bench.json_answers [--engine genai] [--concurrency 1] [--max-tokens 300]

Writes bench/results/json_answers.json and .md. Not a test: tests/test_json_answers.py
checks that the constrained answers parse and fit.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import time
from dataclasses import asdict, dataclass

import jsonschema
import openai

from tests.app_process import ROOT, AppProcess
from tests.json_cases import OBJECT_PROMPTS, PROMPTS, SCHEMAS, instruction

RESULTS = ROOT / "bench" / "results"
SAMPLINGS = [("greedy", 0.0, None), ("seed 1", 0.7, 1), ("seed 2", 0.7, 2)]
FENCE = re.compile(r"^\s*```(?:json)?\s*\n(.*?)\n?```\s*$", re.S)


@dataclass
class Run:
    case: str
    question: str
    sampling: str
    constrained: bool
    text: str
    finish: str
    tokens: int
    ttft_s: float
    ms_per_token: float | None
    parses: bool = False
    parses_unfenced: bool = False
    fits: bool = False


def judge(run: Run, schema: dict) -> Run:
    for text, field in ((run.text, "parses"), (m[1] if (m := FENCE.match(run.text)) else None, "parses_unfenced")):
        if text is None:
            continue
        try:
            value = json.loads(text)
        except ValueError:
            continue
        setattr(run, field, True)
        run.parses_unfenced = True
        try:
            jsonschema.validate(value, schema, format_checker=jsonschema.FormatChecker())
            run.fits = True
        except jsonschema.ValidationError:
            pass
        break
    return run


def ask(client: openai.OpenAI, case: str, question: str, sampling: tuple, constrained: bool,
        max_tokens: int) -> Run:
    name, temperature, seed = sampling
    schema = SCHEMAS.get(case)
    system = instruction(case) if schema else "Answer only with a JSON object, nothing else."
    fields = dict(model="bundled", temperature=temperature, max_tokens=max_tokens, stream=True,
                  stream_options={"include_usage": True},
                  messages=[{"role": "system", "content": system}, {"role": "user", "content": question}])
    if seed is not None:
        fields["seed"] = seed
    if constrained:
        fields["response_format"] = ({"type": "json_schema", "json_schema": {"name": case, "schema": schema}}
                                     if schema else {"type": "json_object"})
    sent = time.perf_counter()
    first = last = None
    text, finish, tokens = "", "", 0
    for chunk in client.chat.completions.create(**fields):
        if chunk.usage:
            tokens = chunk.usage.completion_tokens
        if chunk.choices:
            delta = chunk.choices[0].delta.content or ""
            if delta:
                now = time.perf_counter()
                first = first or now
                last = now
                text += delta
            finish = chunk.choices[0].finish_reason or finish
    per_token = (last - first) * 1000 / (tokens - 1) if first and tokens > 1 else None
    run = Run(case, question, name, constrained, text, finish, tokens, (first or sent) - sent, per_token)
    return judge(run, schema or {"type": "object"})


def summary(runs: list[Run]) -> dict:
    def part(constrained: bool, cases: set[str]) -> dict:
        chosen = [r for r in runs if r.constrained == constrained and r.case in cases]
        speeds = [r.ms_per_token for r in chosen if r.ms_per_token]
        return {"answers": len(chosen), "parse": sum(r.parses for r in chosen),
                "parse_unfenced": sum(r.parses_unfenced for r in chosen), "fit": sum(r.fits for r in chosen),
                "cut_by_length": sum(r.finish == "length" for r in chosen),
                "median_ms_per_token": round(statistics.median(speeds), 2) if speeds else None,
                "median_ttft_s": round(statistics.median(r.ttft_s for r in chosen), 3)}

    schemas, objects = set(SCHEMAS), {"json_object"}
    pairs = {}
    for r in runs:
        pairs.setdefault((r.case, r.question, r.sampling), {})[r.constrained] = r
    ratios = [p[True].ms_per_token / p[False].ms_per_token for p in pairs.values()
              if p[True].case in schemas and p[True].ms_per_token and p[False].ms_per_token]
    return {"schemas": {"without": part(False, schemas), "with": part(True, schemas)},
            "json_object": {"without": part(False, objects), "with": part(True, objects)},
            "paired_ms_per_token_ratio": round(statistics.median(ratios), 3) if ratios else None}


def table(result: dict) -> str:
    lines = ["| questions | constraint | answers | parse | parse after taking off a code fence | fit the schema "
             "| cut at the token limit | ms per token (median) | first text (median) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for kind, label in (("schemas", f"{len(SCHEMAS)} schemas"), ("json_object", "json_object")):
        for mode in ("without", "with"):
            p = result["summary"][kind][mode]
            lines.append(f"| {label} | {mode} | {p['answers']} | {p['parse']} | {p['parse_unfenced']} | {p['fit']} "
                         f"| {p['cut_by_length']} | {p['median_ms_per_token']} | {p['median_ttft_s']} s |")
    ratio = result["summary"]["paired_ms_per_token_ratio"]
    lines += ["", f"Decode time per token with the constraint / without, the same question paired, median: "
                  f"**{ratio}**.", "", f"`{result['command']}` on {result['machine']}; "
                  f"{result['engine']}, max {result['max_tokens']} tokens."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", default="genai")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--max-tokens", type=int, default=300)
    args = parser.parse_args()
    from bench.bench import cpu_name

    app = AppProcess("--model", "bundled", "--engine", args.engine, "--concurrency", str(args.concurrency)).wait_ready()
    client = openai.OpenAI(base_url=f"{app.url}v1", api_key="unused", max_retries=0, timeout=600)
    runs: list[Run] = []
    try:
        cases = [(name, q) for name in SCHEMAS for q in PROMPTS[name]] + [("json_object", q) for q in OBJECT_PROMPTS]
        for sampling in SAMPLINGS:
            for i, (case, question) in enumerate(cases):
                for constrained in ((False, True) if i % 2 == 0 else (True, False)):  # alternate who goes first
                    runs.append(ask(client, case, question, sampling, constrained, args.max_tokens))
                    r = runs[-1]
                    print(f"{sampling[0]:7} {case:12} {'with' if constrained else 'without':7} "
                          f"parse={r.parses!s:5} fit={r.fits!s:5} {r.tokens:4} tokens {r.finish}", flush=True)
    finally:
        app.stop()
    result = {"command": "python -m bench.json_answers " + " ".join(
                  f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()),
              "machine": cpu_name(), "engine": f"{args.engine}, concurrency {args.concurrency}",
              "max_tokens": args.max_tokens, "summary": summary(runs), "runs": [asdict(r) for r in runs]}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "json_answers.json").write_text(json.dumps(result, indent=1))
    (RESULTS / "json_answers.md").write_text(table(result))
    print(table(result))


if __name__ == "__main__":
    main()
