"""How long an exported model takes to read a prompt: openvino-genai, one new token, fresh
prompts (no prefix of one is cached from another), given as text and as token ids.

    python -m bench.prefill FOLDER [FOLDER ...]

Each folder is loaded in turn with the app's default runtime properties and answers the same
prompts (about 170 and 680 tokens, seeded), so two exports of one model compare within a run.
Not a test: nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import time

WORDS = "garden soil tomato bean water sun clay compost basil mint rain frost seed bed wood".split()
LENGTHS = (130, 130, 500)  # words; the first pair shows the spread


def prompts(seed: int = 0) -> list[str]:
    import numpy as np

    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, n)) for n in LENGTHS for _ in ("text", "ids")]


def measure(folder: str) -> list[tuple[str, int, float]]:
    """(input kind, prompt tokens, seconds to the one new token) per prompt."""
    import openvino_genai as ov_genai

    from phi3ui.engine import cache_turn, default_properties

    properties = default_properties()
    with cache_turn(properties):
        pipeline = ov_genai.LLMPipeline(folder, "CPU", **properties)
    tokenizer = pipeline.get_tokenizer()
    config = pipeline.get_generation_config()
    config.max_new_tokens, config.apply_chat_template = 1, False
    pipeline.generate("Hi", config)  # the first inference's one-off work
    rows = []
    for i, text in enumerate(prompts()):
        kind = ("text", "ids")[i % 2]
        encoded = tokenizer.encode(text)
        started = time.perf_counter()
        pipeline.generate(text if kind == "text" else encoded, config)
        rows.append((kind, int(encoded.input_ids.shape[1]), time.perf_counter() - started))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="+", help="exported OpenVINO model folders")
    args = parser.parse_args(argv)
    for folder in args.folders:
        print(folder, flush=True)
        for kind, tokens, seconds in measure(folder):
            print(f"  {kind:4} {tokens:5d} tokens  {seconds:6.2f} s  {1000 * seconds / tokens:5.1f} ms/token",
                  flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
