"""Prompt lookup: how much faster answers come, and on what, against llama.cpp's own.

One idea only. Prompt lookup guesses the next tokens from an n-gram already in the
conversation and checks the guesses in one step, so an answer that repeats the prompt
(an edit, a quote, code with a change) takes fewer steps; an answer in fresh words gains
nothing and pays a little for the checks. That is content, so it is measured on the bundled
SmolLM2-135M-Instruct (real weights, real text), never on random weights, with two kinds of
task: `repeat` (answers that re-use the prompt's text) and `fresh` (bench.py's chat
questions). The Phi-3 shape can only show the cost side: `python -m bench.decode_profile
--tokens-per-step`.

Every runtime is loaded in one process and answers each task in turn, so drift hits them
alike: the app's genai engine without and with prompt lookup (`engines.load_engine`, the
page's own Stats), and llama.cpp (llama-cpp-python on the package's own GGUF) without and
with its LlamaPromptLookupDecoding, set to the same guess length and n-gram size. Greedy,
at most 128 new tokens; decode ms/token is the time after the first token over the tokens
after it.

    python -m bench.lookup --rounds 2      # writes bench/results/lookup.{json,md}

Not a test: nothing asserts a speed.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
import time
from pathlib import Path

from bench.bench import MESSAGES
from bench.quality import reference_answers
from phi3ui.bundled import gguf_path
from phi3ui.engines import load_engine
from phi3ui.export import ensure_exported
from phi3ui.genai_engine import PROMPT_LOOKUP_NGRAM, PROMPT_LOOKUP_TOKENS
from phi3ui.settings import BUNDLED, GenerationSettings, RuntimeSettings

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
NEW_TOKENS = 128

REPEAT = [
    "Correct the spelling in this paragraph and return the whole paragraph: The garden behind our "
    "house is smal but it gets a lot of sun in the afternon. Last year we planted tomatos, beans and "
    "letuce, and the beans grew beter than anything else. This year we want to add herbs like basil, "
    "parsely and thyme near the kitchen door.",
    "Add a docstring to this Python function and return the whole function:\n\n"
    "def mean(values):\n    total = 0\n    for value in values:\n        total += value\n"
    "    return total / len(values)\n",
    "Turn this list into a numbered list, keeping every item as it is: apples from the market, "
    "two loaves of rye bread, a litre of milk, fresh basil for the pasta, olive oil, and a bag of "
    "coffee beans for the weekend.",
    "Repeat this paragraph exactly, word for word: Raised beds warm up earlier in spring, drain "
    "better after heavy rain, and keep the soil loose because nobody walks on it. Fill them with "
    "a mix of compost and topsoil, and top them up every year as the soil settles.",
]
TASKS = {"repeat": REPEAT, "fresh": MESSAGES[:4]}


class Genai:
    def __init__(self, folder: Path, prompt_lookup: bool):
        self.engine = load_engine(folder, RuntimeSettings(engine="genai", prompt_lookup=prompt_lookup))

    def answer(self, message: str) -> tuple[str, float, float, int]:
        """(text, time to first token s, decode ms/token, answer tokens)."""
        prompt = self.engine.render([{"role": "user", "content": message}])
        with self.engine.answer(prompt, GenerationSettings(max_new_tokens=NEW_TOKENS)) as answer:
            answer.text()
        stats = answer.stats
        decode = 1000 / stats.tokens_per_s if stats.tokens_per_s else 0.0  # the page's own figure
        return stats.text, stats.ttft_s, decode, stats.answer_tokens


class Llama:
    def __init__(self, gguf: Path, prompt_lookup: bool):
        import llama_cpp
        from llama_cpp.llama_speculative import LlamaPromptLookupDecoding

        draft = LlamaPromptLookupDecoding(max_ngram_size=PROMPT_LOOKUP_NGRAM, num_pred_tokens=PROMPT_LOOKUP_TOKENS)
        self.llm = llama_cpp.Llama(str(gguf), n_ctx=2048, n_threads=2, n_threads_batch=2, verbose=False,
                                   draft_model=draft if prompt_lookup else None)

    def answer(self, message: str) -> tuple[str, float, float, int]:
        start, stamps, pieces = time.perf_counter(), [], []
        for chunk in self.llm.create_chat_completion([{"role": "user", "content": message}], temperature=0.0,
                                                     top_k=1, max_tokens=NEW_TOKENS, stream=True):
            if text := chunk["choices"][0]["delta"].get("content"):
                stamps.append(time.perf_counter())
                pieces.append(text)
        text = "".join(pieces)
        count = len(self.llm.tokenize(text.encode(), add_bos=False, special=False))
        decode = (stamps[-1] - stamps[0]) / (count - 1) * 1000 if count > 1 else 0.0
        return text, stamps[0] - start, decode, count


def reference_texts() -> dict[str, list[str]]:
    """Each task's greedy answer from the unquantised fp32 model in torch: how far a
    runtime's answer follows it is the quality figure (prompt lookup changes no model, but
    checking several tokens at once rounds differently, and a greedy answer can turn)."""
    from transformers import AutoTokenizer

    from phi3ui.bundled import hf_folder

    source = hf_folder()
    tokenizer = AutoTokenizer.from_pretrained(source)
    messages = [message for kind in TASKS.values() for message in kind]
    _, answers = reference_answers(source, messages, NEW_TOKENS)
    texts = iter(tokenizer.decode(answer, skip_special_tokens=True) for answer in answers)
    return {kind: [next(texts) for _ in tasks] for kind, tasks in TASKS.items()}


def agreement(text: str, reference: str) -> float:
    """The share of the reference answer that `text` repeats before it turns."""
    return len(os.path.commonprefix([text.strip(), reference.strip()])) / max(1, len(reference.strip()))


def measure(rounds: int) -> dict:
    folder = ensure_exported(BUNDLED).folder
    runtimes = {"genai": Genai(folder, False), "genai + prompt lookup": Genai(folder, True),
                "llama.cpp": Llama(gguf_path(), False), "llama.cpp + prompt lookup": Llama(gguf_path(), True)}
    for runtime in runtimes.values():  # warm-up: first-inference work is not counted
        runtime.answer("Say hello.")
    rows = []
    for round_ in range(rounds):
        for kind, messages in TASKS.items():
            for number, message in enumerate(messages):
                for name, runtime in runtimes.items():
                    text, ttft, decode, tokens = runtime.answer(message)
                    rows.append({"round": round_, "kind": kind, "task": number, "runtime": name, "text": text,
                                 "ttft_s": round(ttft, 4), "decode_ms_per_token": round(decode, 2),
                                 "answer_tokens": tokens})
                print(f"  {kind} {number}: " + ", ".join(f"{r['runtime']} {r['decode_ms_per_token']:.1f}"
                                                         for r in rows[-len(runtimes):]) + " ms/token",
                      file=sys.stderr, flush=True)
    references = reference_texts()
    for row in rows:
        row["agreement"] = round(agreement(row["text"], references[row["kind"]][row["task"]]), 3)
    return {"runtimes": list(runtimes), "rows": rows, "references": references}


def table(session: dict) -> list[str]:
    """Median decode ms/token per runtime and kind of task, and the ratio to plain llama.cpp,
    with how many answers equal the plain run's."""
    rows, names = session["rows"], session["runtimes"]
    reference = "llama.cpp"
    lines = [f"| runtime | kind of task | decode ms/token, median | ÷ {reference} | "
             "answers as without prompt lookup | follows the fp32 model's answer, mean | TTFT s, median |",
             "|---|---|---|---|---|---|---|"]
    for kind in TASKS:
        ref = statistics.median(r["decode_ms_per_token"] for r in rows if r["kind"] == kind and r["runtime"] == reference)
        for name in names:
            mine = [r for r in rows if r["kind"] == kind and r["runtime"] == name]
            plain = {(r["round"], r["task"]): r["text"] for r in rows
                     if r["kind"] == kind and r["runtime"] == name.removesuffix(" + prompt lookup")}
            same = sum(r["text"] == plain[(r["round"], r["task"])] for r in mine)
            decode = statistics.median(r["decode_ms_per_token"] for r in mine)
            follows = statistics.fmean(r["agreement"] for r in mine)
            lines.append(f"| {name} | {kind} | {decode:.1f} | {decode / ref:.2f} | "
                         f"{f'{same}/{len(mine)}' if name.endswith('lookup') else '–'} | {follows:.0%} | "
                         f"{statistics.median(r['ttft_s'] for r in mine):.2f} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m bench.lookup", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2, help="times every task is asked of every runtime")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    session = {"date": time.strftime("%Y-%m-%d %H:%M %Z"), "command": "python -m bench.lookup " + shlex.join(argv),
               "new_tokens": NEW_TOKENS, "guess_tokens": PROMPT_LOOKUP_TOKENS, "ngram": PROMPT_LOOKUP_NGRAM,
               **measure(args.rounds)}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "lookup.json").write_text(json.dumps(session, indent=1))
    lines = ["## Prompt lookup", "", f"Made by `python -m bench.lookup` (see bench/lookup.py), {session['date']}:",
             "", "```", session["command"], "```", "",
             f"Bundled SmolLM2-135M-Instruct (int4), greedy, at most {NEW_TOKENS} new tokens, "
             f"{args.rounds} rounds of {sum(map(len, TASKS.values()))} tasks, every runtime in one process "
             f"answering each task in turn. Guesses of {PROMPT_LOOKUP_TOKENS} tokens after an n-gram of up to "
             f"{PROMPT_LOOKUP_NGRAM}, for both runtimes. `repeat`: answers that re-use the prompt's text "
             "(spelling fixes, a docstring added, a list numbered, a quote); `fresh`: bench.py's chat questions. "
             "\"Follows the fp32 model\": the share of the unquantised model's own greedy answer (torch, fp32) "
             "an answer repeats before it turns; int4 alone already turns early.",
             "", *table(session), ""]
    (args.out / "lookup.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
