"""Tiny stand-ins for Phi-3-mini-4k-instruct, built offline for the test suite.

The real model cannot be downloaded here (no hub access) and is too big for fast tests,
so these helpers build, from files in the repository and installed libraries:

* Phi-3's own tokenizer (`tests/phi3_tokenizer.py`: its vocabulary, merges, added tokens
  with their flags, and chat template, checked against ids from the original tokenizer);
* a random-weight `Phi3ForCausalLM` with the real architecture and vocabulary (32,064 rows)
  but tiny layers, saved as a Hugging Face folder that optimum-intel can export to OpenVINO
  (int4, group size 128).

Token ids are Phi-3's: <|endoftext|> 32000, <|assistant|> 32001, <|end|> 32007, ...
"""

from __future__ import annotations

import json
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


def make_tiny_phi3(dest: Path, seed: int = 0) -> Path:
    """Save a tiny random-weight Phi3ForCausalLM with Phi-3's tokenizer and generation config.

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
            model = Phi3ForCausalLM(tiny_phi3_config()).eval()
        model.generation_config = GenerationConfig(**phi3_generation_config())
        model.save_pretrained(tmp, safe_serialization=True)
        _check_generation_config(tmp)
    return dest


def _check_generation_config(dest: Path) -> None:
    """Fail early if save_pretrained dropped the list of stop ids the app relies on."""
    saved = json.loads((dest / "generation_config.json").read_text())
    if saved.get("eos_token_id") != GENERATION_EOS_IDS:
        raise RuntimeError(f"generation_config.json eos_token_id is {saved.get('eos_token_id')}")
