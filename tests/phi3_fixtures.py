"""Tiny stand-ins for Phi-3-mini-4k-instruct, built offline for the test suite.

The real model cannot be downloaded here (no hub access) and is too big for fast tests,
so these helpers build, from files in the repository and installed libraries:

* Phi-3's own tokenizer (`tests/phi3_tokenizer.py`: its vocabulary, merges, added tokens
  with their flags, and chat template, checked against ids from the original tokenizer);
* a random-weight `Phi3ForCausalLM` with the real architecture and vocabulary (32,064 rows)
  but tiny layers, saved as a Hugging Face folder that optimum-intel can export to OpenVINO
  (int4, group size 128);
* its long-window twin (`make_tiny_longrope_phi3`): Phi-3-mini-128k / Phi-3.5-mini's LongRoPE
  settings, with weights that int8 and fp16 exports store exactly, so logits can be compared
  with transformers' to rounding error (tests/test_longrope.py).

Token ids are Phi-3's: <|endoftext|> 32000, <|assistant|> 32001, <|end|> 32007, ...
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Final

import torch
from transformers import (
    AutoTokenizer,
    GenerationConfig,
    Phi3Config,
    Phi3ForCausalLM,
    PreTrainedTokenizerBase,
)

from tests.phi3_tokenizer import (
    BASE_VOCAB,
    GENERATION_EOS_IDS,
    phi3_generation_config,
    phi3_mini_config,
    phi3_tokenizer_folder,
)
from phi3ui.files import staged

# Phi-3's leading special tokens (ids 0, 1, 2) and its added tokens.
UNK, BOS, EOS_SENTENCE = "<unk>", "<s>", "</s>"
ENDOFTEXT, ASSISTANT, SYSTEM, END, USER = "<|endoftext|>", "<|assistant|>", "<|system|>", "<|end|>", "<|user|>"
ADDED_TOKENS: Final[tuple[str, ...]] = (
    ENDOFTEXT,
    ASSISTANT,
    "<|placeholder1|>",
    "<|placeholder2|>",
    "<|placeholder3|>",
    "<|placeholder4|>",
    SYSTEM,
    END,
    "<|placeholder5|>",
    "<|placeholder6|>",
    USER,
)
TOKEN_IDS: Final[dict[str, int]] = {
    UNK: 0,
    BOS: 1,
    EOS_SENTENCE: 2,
    **{token: BASE_VOCAB + i for i, token in enumerate(ADDED_TOKENS)},
}
TOKENIZER_SIZE: Final[int] = BASE_VOCAB + len(ADDED_TOKENS)  # 32011, len(tokenizer)
VOCAB_SIZE: Final[int] = 32064  # the model's embedding rows, as Phi-3's; ids past the tokenizer are padding
LONGROPE_TRAINED: Final[int] = 4096  # original_max_position_embeddings: past it LongRoPE's long factors apply
LONGROPE_WINDOW: Final[int] = 131072  # max_position_embeddings of Phi-3-mini-128k and Phi-3.5-mini


def make_phi3_tokenizer(dest: Path) -> PreTrainedTokenizerBase:
    """Write Phi-3's tokenizer to `dest` and load it back, as an exporter would read it."""
    return AutoTokenizer.from_pretrained(phi3_tokenizer_folder(Path(dest)))


def tiny_phi3_config() -> Phi3Config:
    """Phi-3-mini's architecture and vocabulary at toy width and depth.

    Every linear layer's input width (256 or 512) is a multiple of 128, so NNCF int4 with
    group size 128 applies to all of them; head_dim is 64.
    """
    return phi3_mini_config(hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                            num_attention_heads=4, num_key_value_heads=4)


def longrope_factors(head_dim: int) -> tuple[list[float], list[float]]:
    """Short and long LongRoPE factors (head_dim / 2 of each) shaped like Phi-3-mini-128k's:
    short ones near 1, long ones rising to 64 on the slowest frequencies. They differ by far
    more than rounding, so a runtime that applies the wrong set shows in the logits."""
    half = head_dim // 2
    short = [round(1.0 + 0.5 * i / (half - 1), 4) for i in range(half)]
    long = [round(64.0 ** (i / (half - 1)), 4) for i in range(half)]
    return short, long


def tiny_longrope_phi3_config() -> Phi3Config:
    """The tiny Phi-3 with Phi-3-mini-128k / Phi-3.5-mini's long-window settings: LongRoPE,
    trained on 4,096 positions, stretched to 131,072; their sliding window (262,144) never
    cuts in, so only the rotary factors change past 4,096.

    Weights are drawn five times wider than Phi-3's init (0.1, not 0.02): at 0.02 attention
    is nearly uniform and the wrong factor set moves the logits by 0.07 at 5,000 tokens; at
    0.1 it moves them by about 10 and changes the argmax, so a mistake cannot hide in noise.
    """
    base = tiny_phi3_config()
    short, long = longrope_factors(base.hidden_size // base.num_attention_heads)
    return phi3_mini_config(
        hidden_size=base.hidden_size, intermediate_size=base.intermediate_size,
        num_hidden_layers=base.num_hidden_layers, num_attention_heads=base.num_attention_heads,
        num_key_value_heads=base.num_key_value_heads, initializer_range=0.1,
        max_position_embeddings=LONGROPE_WINDOW, original_max_position_embeddings=LONGROPE_TRAINED,
        sliding_window=262144, rope_scaling={"type": "longrope", "short_factor": short, "long_factor": long},
    )


def on_exact_grid(weight: torch.Tensor) -> torch.Tensor:
    """`weight` moved onto a grid that both int8 (NNCF's symmetric per-channel, either axis)
    and fp16 store without loss: integer multiples, -128..127, of one power-of-two step, with
    -128 in every row and every column so that NNCF's scale (largest magnitude / 128) is that
    step whichever axis it reduces. An export then changes no weight, and any difference from
    transformers is the runtime's own."""
    step = 2.0 ** math.ceil(math.log2(weight.abs().max().item() / 127))
    grid = torch.clamp(torch.round(weight / step), -127, 127)
    rows, cols = grid.shape
    diagonal = torch.arange(max(rows, cols))
    grid[diagonal % rows, diagonal % cols] = -128
    return grid * step


def make_tiny_phi3(dest: Path, seed: int = 0, config: Phi3Config | None = None,
                   exact_weights: bool = False) -> Path:
    """Save a tiny random-weight Phi3ForCausalLM with Phi-3's tokenizer and generation config
    (`config` defaults to `tiny_phi3_config()`; `exact_weights` puts every matrix
    `on_exact_grid`, for comparisons that must see no compression noise).

    Built in a temporary folder beside `dest` and renamed into place, so a `dest` that has
    config.json is complete. Weights depend only on `seed` (the global torch RNG is left
    untouched). Returns `dest`.
    """
    dest = Path(dest)
    with staged(dest, last="config.json") as tmp:
        tmp.mkdir()
        phi3_tokenizer_folder(tmp)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = Phi3ForCausalLM(config or tiny_phi3_config()).eval()
        if exact_weights:
            with torch.no_grad():
                for weight in (p for p in model.parameters() if p.dim() == 2):
                    weight.copy_(on_exact_grid(weight))
        model.generation_config = GenerationConfig(**phi3_generation_config())
        model.save_pretrained(tmp, safe_serialization=True)
        _check_generation_config(tmp)
        _publish_rope_layout(tmp)
    return dest


def make_tiny_longrope_phi3(dest: Path, seed: int = 0) -> Path:
    """The tiny Phi-3 shaped like Phi-3-mini-128k / Phi-3.5-mini, weights on the exact grid."""
    return make_tiny_phi3(dest, seed, tiny_longrope_phi3_config(), exact_weights=True)


def _publish_rope_layout(folder: Path) -> None:
    """Write a LongRoPE config.json the way Microsoft's Phi-3-mini-128k / Phi-3.5-mini repos
    publish it (`rope_scaling` with `type`, `rope_theta` beside it) rather than transformers
    5's `rope_parameters`: users bring the published layout, so that is what gets exported."""
    path = folder / "config.json"
    config = json.loads(path.read_text())
    rope = config.get("rope_parameters") or {}
    if rope.get("rope_type") != "longrope":
        return
    del config["rope_parameters"]
    config["rope_theta"] = rope["rope_theta"]
    config["rope_scaling"] = {"type": "longrope", "short_factor": rope["short_factor"],
                              "long_factor": rope["long_factor"]}
    path.write_text(json.dumps(config, indent=2))


def _check_generation_config(dest: Path) -> None:
    """Fail early if save_pretrained dropped the list of stop ids the app relies on."""
    saved = json.loads((dest / "generation_config.json").read_text())
    if saved.get("eos_token_id") != GENERATION_EOS_IDS:
        raise RuntimeError(f"generation_config.json eos_token_id is {saved.get('eos_token_id')}")
