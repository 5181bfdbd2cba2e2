"""Answer quality of export and runtime choices, on the bundled model.

A faster setting must not cost answer quality, and that is measured, not assumed. For each
configuration (the names of bench/decode.py, applied to the bundled model), two figures
against `seed`'s (the default export, int4 sym g64 ratio 0.6, with LATENCY and 1 stream):

- how many greedy answers to a fixed set of questions are the same as the seed's;
- the mean log-likelihood per token that the configuration gives the greedy answers of the
  unquantised fp32 model in torch (teacher forcing): the closer to 0, the closer to the
  real model, and it does not favour the seed.

    python -m bench.quality --configs seed,default,g64-r1,cw-r1,asym-cw-r1,asym-cw-r1-all,dq-128

Writes bench/results/quality.json and quality.md. tests/test_quality.py uses the same
functions to hold the app's presets to these scores.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from phi3ui.bundled import hf_folder
from phi3ui.settings import GenerationSettings

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
QUESTIONS = [
    "What is the capital of France?",
    "Explain what a prime number is in two sentences.",
    "Write a Python function that returns the square of a number.",
    "Give me three tips for sleeping better.",
    "Translate 'good morning' into Spanish and German.",
    "Why is the sky blue?",
]
ANSWER_TOKENS = 64
KV_KEYS = {"KEY_CACHE_PRECISION", "VALUE_CACHE_PRECISION", "KV_CACHE_PRECISION"}


def greedy_answers(engine) -> list[str]:
    settings = GenerationSettings(max_new_tokens=ANSWER_TOKENS)
    answers = []
    for question in QUESTIONS:
        prompt = engine.render([{"role": "user", "content": question}])
        with engine.answer(prompt, settings) as answer:
            answer.text()
        answers.append(answer.stats.text)
    return answers


def reference_answers(source: Path, questions: list[str] = QUESTIONS,
                      max_new_tokens: int = ANSWER_TOKENS) -> tuple[list[list[int]], list[list[int]]]:
    """(prompt ids, answer ids): greedy answers of the unquantised fp32 model in torch, the
    closest thing to the true model here, so no OpenVINO configuration is favoured."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    prompts, answers = [], []
    for question in questions:
        text = tokenizer.apply_chat_template([{"role": "user", "content": question}], tokenize=False,
                                             add_generation_prompt=True)
        ids = tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids
        out = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=2, pad_token_id=2)
        prompts.append(ids[0].tolist())
        answers.append(out[0, ids.shape[1]:].tolist())
    return prompts, answers


def mean_log_likelihood(folder: Path, properties: dict, prompts: list[list[int]], answers: list[list[int]]) -> float:
    """Mean log-probability per answer token that the OpenVINO model gives the reference
    answers (teacher forcing, one forward pass per question)."""
    import torch
    from optimum.intel import OVModelForCausalLM

    model = OVModelForCausalLM.from_pretrained(folder, device="CPU", ov_config=properties)
    total, count = 0.0, 0
    for prompt, answer in zip(prompts, answers):
        ids = torch.tensor([prompt + answer])
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0].float()
        logprobs = torch.log_softmax(logits[len(prompt) - 1: -1], dim=-1)
        total += logprobs.gather(1, torch.tensor(answer)[:, None]).sum().item()
        count += len(answer)
    return total / count


def score(names: list[str]) -> list[dict]:
    """Each configuration's export (made if missing), greedy answers and log-likelihood."""
    from bench.decode import CONFIGS, genai_properties, model_export
    from phi3ui.engine import default_properties, merge_properties, without_cache
    from phi3ui.engines import load_engine
    from phi3ui.export import ExportError
    from phi3ui.settings import RuntimeSettings, SettingsError

    prompts, references = reference_answers(hf_folder())
    rows, seed_answers = [], None
    for name in ["seed", *[n for n in names if n != "seed"]]:
        config = CONFIGS[name]
        try:
            folder = model_export("bundled", config.export)
        except (SettingsError, ExportError) as error:  # e.g. group 128 on 576-wide layers
            rows.append({"config": name, "about": config.about, "error": str(error).splitlines()[0]})
            continue
        properties = genai_properties(config)
        engine = load_engine(folder, RuntimeSettings(engine="genai", properties=properties))
        answers = greedy_answers(engine)
        engine.close()
        del engine
        seed_answers = seed_answers or answers
        used = without_cache(merge_properties(default_properties(), properties))
        rows.append({
            "config": name, "about": config.about, "properties": used,
            "weights_mb": round((folder / "openvino_model.bin").stat().st_size / 1e6, 1),
            "same_answers": sum(a == s for a, s in zip(answers, seed_answers)),
            # One forward pass over prompt and answer attends to keys it has just computed, never
            # to a stored KV cache: its score cannot see the cache's precision.
            "log_likelihood": None if KV_KEYS & used.keys() else
            round(mean_log_likelihood(folder, used, prompts, references), 4),
            "answers": answers,
        })
        print(f"{name}: {rows[-1]['same_answers']}/{len(QUESTIONS)} same, "
              f"log-likelihood {rows[-1]['log_likelihood']}", file=sys.stderr, flush=True)
    return rows


def likelihood_text(value: float | None) -> str:
    return "– (cannot see a KV cache's precision)" if value is None else f"{value:.3f}"


def markdown(rows: list[dict], command: str) -> str:
    lines = [
        "# Answer quality on the bundled model", "",
        f"Made by `{command}` (see bench/quality.py). Greedy answers ({ANSWER_TOKENS} tokens at most) "
        f"to {len(QUESTIONS)} fixed questions, compared with those of `seed`, the default export (\"most "
        "accurate\") with the app's default runtime properties; and the mean log-likelihood per "
        "token of the fp32 torch model's own greedy answers (closer to 0 is closer to the real model). "
        "The configurations are bench/decode.py's (`python -m bench.decode --list`).", "",
        "| configuration | weights (MB) | same greedy answers as `seed` | log-likelihood |",
        "|---|---|---|---|",
    ]
    for row in rows:
        if "error" in row:
            lines.append(f"| {row['config']}: {row['about']} | – | does not apply: {row['error']} | – |")
        else:
            lines.append(f"| {row['config']}: {row['about']} | {row['weights_mb']} | "
                         f"{row['same_answers']}/{len(QUESTIONS)} | {likelihood_text(row['log_likelihood'])} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.quality", description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", default="seed,default", help="bench/decode.py names, comma-separated")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    rows = score([n.strip() for n in args.configs.split(",") if n.strip()])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "quality.json").write_text(json.dumps(rows, indent=1, ensure_ascii=False))
    command = "python -m bench.quality " + " ".join(argv if argv is not None else sys.argv[1:])
    (args.out / "quality.md").write_text(markdown(rows, command.strip()))
    print(markdown(rows, command.strip()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
