"""Self-checks for tests/phi3_fixtures.py: the stand-in must behave like Phi-3 where the app cares.

Fast (a few seconds): no OpenVINO model export here, only the tokenizer conversion. The
tokenizer's own faithfulness to Phi-3 (reference ids) is tests/test_phi3_tokenizer.py's.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    PreTrainedTokenizerBase,
)

from tests.phi3_tokenizer import PHI3_CHAT_TEMPLATE, phi3_sizes
from tests.phi3_fixtures import (
    ASSISTANT,
    END,
    ENDOFTEXT,
    GENERATION_EOS_IDS,
    TOKEN_IDS,
    TOKENIZER_SIZE,
    USER,
    VOCAB_SIZE,
    make_phi3_tokenizer,
    make_tiny_phi3,
)

SYSTEM_PROMPT = "You are a helpful assistant."
TURNS = [
    ("What is the capital of France?", "Paris."),
    ("And of Germany?", "Berlin."),
    ("你好，世界 😀", "こんにちは 🎉"),
]
UNICODE_TEXTS = [
    "The capital of France is Paris.",
    "中文测试：你好，世界！",
    "日本語のテキストです。",
    "emoji 😀🎉👍🏽 and naïve café",
    "  leading spaces,\ttabs\nand newlines\n\n",
]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_phi3(tmp_path_factory.mktemp("tiny-phi3"))


@pytest.fixture(scope="module")
def tok(model_dir: Path) -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(model_dir)


def conversation(n_turns: int, system: bool) -> list[dict[str, str]]:
    """`n_turns` user messages, each answered except the last (the one to be answered)."""
    messages = [{"role": "system", "content": SYSTEM_PROMPT}] if system else []
    for i, (user, answer) in enumerate(TURNS[:n_turns]):
        messages.append({"role": "user", "content": user})
        if i < n_turns - 1:
            messages.append({"role": "assistant", "content": answer})
    return messages


def expected_prompt(n_turns: int, system: bool) -> str:
    """The Phi-3 format written out by hand, independently of the Jinja template."""
    text = f"<|system|>\n{SYSTEM_PROMPT}<|end|>\n" if system else ""
    for i, (user, answer) in enumerate(TURNS[:n_turns]):
        text += f"<|user|>\n{user}<|end|>\n<|assistant|>\n"
        if i < n_turns - 1:
            text += f"{answer}<|end|>\n"
    return text


@pytest.mark.parametrize("system", [True, False], ids=["system", "no-system"])
@pytest.mark.parametrize("n_turns", [1, 2, 3])
def test_chat_template_renders_phi3_format(tok: PreTrainedTokenizerBase, n_turns: int, system: bool) -> None:
    rendered = tok.apply_chat_template(conversation(n_turns, system), add_generation_prompt=True, tokenize=False)
    assert rendered == expected_prompt(n_turns, system)


def test_chat_template_exact_brief_example(tok: PreTrainedTokenizerBase) -> None:
    messages = [
        {"role": "system", "content": "SYS"},
        {"role": "user", "content": "U1"},
        {"role": "assistant", "content": "A1"},
        {"role": "user", "content": "U2"},
    ]
    assert tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False) == (
        "<|system|>\nSYS<|end|>\n<|user|>\nU1<|end|>\n<|assistant|>\nA1<|end|>\n<|user|>\nU2<|end|>\n<|assistant|>\n"
    )


def test_chat_template_without_generation_prompt_ends_with_eos(tok: PreTrainedTokenizerBase) -> None:
    messages = [{"role": "user", "content": "U1"}, {"role": "assistant", "content": "A1"}]
    rendered = tok.apply_chat_template(messages, add_generation_prompt=False, tokenize=False)
    assert rendered == "<|user|>\nU1<|end|>\n<|assistant|>\nA1<|end|>\n<|endoftext|>"


def test_tokenizer_carries_template_and_phi3_tokens(tok: PreTrainedTokenizerBase) -> None:
    assert tok.chat_template == PHI3_CHAT_TEMPLATE
    assert (tok.eos_token, tok.bos_token, tok.unk_token, tok.pad_token) == (ENDOFTEXT, "<s>", "<unk>", ENDOFTEXT)
    assert tok.eos_token_id == TOKEN_IDS[ENDOFTEXT] and len(tok) == TOKENIZER_SIZE == 32011


@pytest.mark.parametrize("token", list(TOKEN_IDS))
def test_special_token_encodes_to_one_id(tok: PreTrainedTokenizerBase, token: str) -> None:
    assert tok.encode(token, add_special_tokens=False) == [TOKEN_IDS[token]]
    assert tok.convert_ids_to_tokens(TOKEN_IDS[token]) == token


def test_special_ids_are_phi3s(tok: PreTrainedTokenizerBase) -> None:
    ids = {token: tok.convert_tokens_to_ids(token) for token in TOKEN_IDS}
    assert (ids[ENDOFTEXT], ids[ASSISTANT], ids["<|system|>"], ids[END], ids[USER]) == (32000, 32001, 32006, 32007, 32010)
    assert [ids[t] for t in ("<unk>", "<s>", "</s>")] == [0, 1, 2]


def test_padding_ids_past_the_tokenizer_decode_to_nothing(tok: PreTrainedTokenizerBase) -> None:
    """The model has 32,064 output rows, the tokenizer 32,011 tokens, as Phi-3: an id in between
    (which a random model can emit) must not break decoding."""
    hello = tok.encode("Hello", add_special_tokens=False)
    assert tok.decode([*hello, TOKENIZER_SIZE, VOCAB_SIZE - 1]) == "Hello"


@pytest.mark.parametrize("add_special_tokens", [True, False])
def test_encoding_adds_nothing(tok: PreTrainedTokenizerBase, add_special_tokens: bool) -> None:
    ids = tok("hello world", add_special_tokens=add_special_tokens).input_ids
    assert ids == tok.encode("hello world", add_special_tokens=False)
    assert TOKEN_IDS["<s>"] not in ids and TOKEN_IDS[ENDOFTEXT] not in ids


def test_role_tokens_swallow_following_newline_like_phi3(tok: PreTrainedTokenizerBase) -> None:
    """Phi-3's role tokens are rstrip=True: the template's newline after them is not a token."""
    assert tok.encode("<|user|>\nHi<|end|>\n", add_special_tokens=False) == [
        TOKEN_IDS[USER],
        *tok.encode("Hi", add_special_tokens=False),
        TOKEN_IDS[END],
    ]


@pytest.mark.parametrize("text", UNICODE_TEXTS)
def test_unicode_round_trips(tok: PreTrainedTokenizerBase, text: str) -> None:
    ids = tok.encode(text, add_special_tokens=False)
    assert TOKEN_IDS["<unk>"] not in ids
    assert tok.decode(ids) == text


def test_skip_special_tokens_drops_role_markers(tok: PreTrainedTokenizerBase) -> None:
    ids = tok.encode("<|assistant|>\nParis.<|end|>\n<|endoftext|>", add_special_tokens=False)
    assert tok.decode(ids, skip_special_tokens=True) == "Paris."


def test_openvino_tokenizer_conversion_round_trips(tok: PreTrainedTokenizerBase) -> None:
    """The export writes openvino_(de)tokenizer.xml with this; openvino_genai relies on them."""
    import openvino as ov
    from openvino_tokenizers import convert_tokenizer

    ov_tokenizer, ov_detokenizer = convert_tokenizer(tok, with_detokenizer=True)
    encode, decode = ov.compile_model(ov_tokenizer, "CPU"), ov.compile_model(ov_detokenizer, "CPU")
    prompt = expected_prompt(3, system=True)
    for text in [*UNICODE_TEXTS, prompt]:
        ov_ids = encode([text])["input_ids"][0].tolist()
        assert ov_ids == tok.encode(text, add_special_tokens=False)
    for text in UNICODE_TEXTS:
        assert decode([tok.encode(text, add_special_tokens=False)])["string_output"][0] == text


def test_make_phi3_tokenizer_returns_saved_tokenizer(tmp_path: Path) -> None:
    tokenizer = make_phi3_tokenizer(tmp_path)
    assert (tmp_path / "tokenizer.json").is_file()
    assert tokenizer.encode(END, add_special_tokens=False) == [TOKEN_IDS[END]]


def test_tiny_model_loads_and_gives_logits(model_dir: Path, tok: PreTrainedTokenizerBase) -> None:
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    config = model.config
    assert config.model_type == "phi3" and config.vocab_size == VOCAB_SIZE == phi3_sizes().vocab_size
    assert len(tok) == TOKENIZER_SIZE
    assert (config.hidden_size, config.intermediate_size, config.num_hidden_layers) == (256, 512, 2)
    assert config.hidden_size % 128 == 0 and config.intermediate_size % 128 == 0
    ids = tok(expected_prompt(2, system=True), return_tensors="pt", add_special_tokens=False).input_ids
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    assert logits.shape == (1, ids.shape[1], VOCAB_SIZE)
    assert torch.isfinite(logits).all()


def test_generation_config_lists_phi3_stop_ids(model_dir: Path) -> None:
    generation_config = GenerationConfig.from_pretrained(model_dir)
    assert generation_config.eos_token_id == GENERATION_EOS_IDS == [
        TOKEN_IDS[ENDOFTEXT],
        TOKEN_IDS[ASSISTANT],
        TOKEN_IDS[END],
    ]


def test_weights_are_reproducible(model_dir: Path, tmp_path: Path) -> None:
    again = make_tiny_phi3(tmp_path / "again")
    assert (again / "model.safetensors").read_bytes() == (model_dir / "model.safetensors").read_bytes()
    assert (again / "tokenizer.json").read_bytes() == (model_dir / "tokenizer.json").read_bytes()
