"""Phi-3's tokenizer as tests/phi3_tokenizer.py rebuilds it, against ids from the original.

Fast: the Hugging Face tokenizer and tokenizer.model on llama.cpp's reference strings.
Slow: the tiny Phi-3 exported through the app's own path; its OpenVINO tokenizer and
detokenizer (what the genai engine uses) must match the reference id for id, on those strings
and on rendered Phi-3 chats, and text streamed a token at a time must come out whole.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from tests.phi3_tokenizer import (
    FILES,
    GENERATION_EOS_IDS,
    PHI3_CHAT_TEMPLATE,
    phi3_generation_config,
    phi3_sizes,
    phi3_tokenizer_folder,
    reference_vectors,
)
from phi3ui import prompt as prompts
from phi3ui.batching import IncrementalText

VECTORS = reference_vectors()
VECTOR_IDS = [repr(text)[:40] for text, _ in VECTORS]

# Text that streams in byte-fallback pieces or starts with spaces, beside the reference strings.
STREAMED = ["東京 🦙 café", " leading spaces", "a\n\nb", "trailing  ", "😶‍🌫️👍🏽", "한국어 テスト ✅"]

CODE = 'def mean(xs):\n    """Average."""\n\treturn sum(xs) / len(xs)  # 😀\n\n\n'
CHATS = {
    "system and turns": [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "And of Germany?"},
        {"role": "assistant", "content": "Berlin."},
        {"role": "user", "content": "Thanks!"},
    ],
    "code": [{"role": "user", "content": f"Fix this:\n```python\n{CODE}```"},
             {"role": "assistant", "content": f"```python\n{CODE}```"},
             {"role": "user", "content": "    indented\n\ttabbed"}],
    "cjk and emoji": [{"role": "system", "content": "答えは日本語で。"},
                      {"role": "user", "content": "東京は日本の首都ですか？ 你好，世界！ 한국어 🦙🚀"},
                      {"role": "assistant", "content": "はい、そうです 😶‍🌫️👍🏽"},
                      {"role": "user", "content": "Ünïcödé café ½ …"}],
    "spaces": [{"role": "system", "content": "  two leading"},
               {"role": "user", "content": "trailing spaces   "},
               {"role": "assistant", "content": " one leading"},
               {"role": "user", "content": "\n\nnewlines first and last\n"}],
    "empty messages": [{"role": "system", "content": ""}, {"role": "user", "content": ""},
                       {"role": "assistant", "content": ""}, {"role": "user", "content": "Hi"}],
    "special token text": [{"role": "user", "content": "What does <|end|> mean after </s>?"}],
}


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return phi3_tokenizer_folder(tmp_path_factory.mktemp("phi3") / "tokenizer")


@pytest.fixture(scope="module")
def hf(folder: Path) -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(folder)


def test_reference_vectors_are_llama_cpps() -> None:
    assert len(VECTORS) == 46 and ("", []) in VECTORS
    assert (" Hello world", [29871, 15043, 3186]) in VECTORS


@pytest.mark.parametrize(("text", "ids"), VECTORS, ids=VECTOR_IDS)
def test_hf_tokenizer_gives_the_reference_ids(hf: PreTrainedTokenizerBase, text: str, ids: list[int]) -> None:
    assert hf.encode(text, add_special_tokens=False) == ids
    assert hf(text).input_ids == ids  # adds no BOS either, as Phi-3's current config
    assert hf.decode(ids) == text


@pytest.mark.parametrize(("text", "ids"), VECTORS, ids=VECTOR_IDS)
def test_sentencepiece_model_gives_the_reference_ids(folder: Path, text: str, ids: list[int]) -> None:
    """tokenizer.model, the slow tokenizer (transformers 5 has no sentencepiece Llama class,
    so it is checked with sentencepiece itself)."""
    import sentencepiece

    slow = sentencepiece.SentencePieceProcessor(model_file=str(folder / "tokenizer.model"))
    assert slow.encode(text) == ids
    assert slow.decode(ids) == text


def test_folder_carries_phi3s_special_tokens_template_and_sizes(folder: Path, hf: PreTrainedTokenizerBase) -> None:
    assert sorted(p.name for p in folder.iterdir()) == sorted(FILES)
    added = {t["content"]: t for t in json.loads((folder / "tokenizer.json").read_text())["added_tokens"]}
    assert {name: (t["id"], t["rstrip"], t["special"]) for name, t in added.items()} == {
        "<unk>": (0, False, True), "<s>": (1, False, True), "</s>": (2, True, False),
        "<|endoftext|>": (32000, False, True), "<|assistant|>": (32001, True, True),
        **{f"<|placeholder{k}|>": (32001 + k, True, True) for k in range(1, 5)},
        "<|system|>": (32006, True, True), "<|end|>": (32007, True, True),
        "<|placeholder5|>": (32008, True, True), "<|placeholder6|>": (32009, True, True),
        "<|user|>": (32010, True, True)}
    assert hf.chat_template == PHI3_CHAT_TEMPLATE == prompts.PHI3_CHAT_TEMPLATE
    assert (hf.bos_token, hf.eos_token, hf.pad_token, hf.unk_token) == ("<s>", "<|endoftext|>", "<|endoftext|>", "<unk>")
    assert hf.encode("<|user|>\nHi<|end|>\n", add_special_tokens=False) == [32010, 6324, 32007]  # rstrip
    assert GENERATION_EOS_IDS == phi3_generation_config()["eos_token_id"] == [32000, 32001, 32007]
    sizes = phi3_sizes()
    assert (sizes.vocab_size, sizes.hidden_size, sizes.intermediate_size, sizes.num_hidden_layers,
            sizes.num_attention_heads, sizes.max_position_embeddings) == (32064, 3072, 8192, 32, 32, 4096)


def test_microsofts_tokenizer_class_loads_right_beside_a_phi3_config(folder: Path, tmp_path: Path) -> None:
    """The real repository says "LlamaTokenizer"; in a model folder (config.json, model_type phi3)
    transformers loads tokenizer.json as is, so the app's models get these ids too."""
    model = tmp_path / "model"
    shutil.copytree(folder, model)
    config = json.loads((model / "tokenizer_config.json").read_text())
    (model / "tokenizer_config.json").write_text(json.dumps({**config, "tokenizer_class": "LlamaTokenizer"}))
    (model / "config.json").write_text(json.dumps({"model_type": "phi3", "vocab_size": 32064}))
    tok = AutoTokenizer.from_pretrained(model)
    assert [text for text, ids in VECTORS if tok.encode(text, add_special_tokens=False) != ids] == []


def test_builder_is_a_no_op_when_complete(folder: Path) -> None:
    before = {name: (folder / name).stat().st_mtime_ns for name in FILES}
    assert phi3_tokenizer_folder(folder) == folder
    assert {name: (folder / name).stat().st_mtime_ns for name in FILES} == before


def test_builder_fails_loudly_and_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tests.phi3_tokenizer as builder

    monkeypatch.setattr(builder, "reference_vectors", lambda: [(" Hello", [15043])])
    with pytest.raises(RuntimeError, match=r"not Phi-3's tokenizer:\n.*' Hello'"):
        phi3_tokenizer_folder(tmp_path / "tokenizer")
    assert list(tmp_path.iterdir()) == []


# The exported model: what the genai engine reads and writes.


@pytest.fixture(scope="module")
def exported(tiny_phi3, tiny_phi3_source: Path) -> Path:
    source = json.loads((tiny_phi3_source / "config.json").read_text())
    assert source["vocab_size"] == 32064 and (tiny_phi3_source / "tokenizer.model").exists(), (
        f"{tiny_phi3_source} was built by an older tests/phi3_fixtures.py: bump TINY_PHI3_VERSION")
    return tiny_phi3.folder


@pytest.fixture(scope="module")
def ov(exported: Path):
    import openvino_genai

    return openvino_genai.Tokenizer(str(exported))


def ov_encode(ov, text: str) -> list[int]:
    return [int(i) for i in ov.encode(text, add_special_tokens=False).input_ids.data[0]]


def stream(decode, ids: list[int]) -> list[str]:
    """The ids one at a time through the batching engine's IncrementalText."""
    text = IncrementalText(decode)
    return [*(text.push([i]) for i in ids), text.flush()]


@pytest.mark.slow
@pytest.mark.parametrize(("text", "ids"), VECTORS, ids=VECTOR_IDS)
def test_openvino_tokenizer_gives_the_reference_ids(ov, text: str, ids: list[int]) -> None:
    assert ov_encode(ov, text) == ids, f"openvino-tokenizers encodes {text!r} differently from Phi-3"
    assert (ov.decode(ids) if ids else "") == text, f"openvino-tokenizers decodes {ids} differently from Phi-3"


@pytest.mark.slow
@pytest.mark.parametrize("chat", list(CHATS), ids=list(CHATS))
def test_openvino_tokenizer_matches_reference_on_phi3_chats(ov, hf, chat: str) -> None:
    messages = CHATS[chat]
    reference = hf.apply_chat_template(messages, tokenize=True, add_generation_prompt=True, return_dict=False)
    rendered = hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert ov.apply_chat_template(messages, add_generation_prompt=True) == rendered
    assert ov_encode(ov, rendered) == reference, f"openvino-tokenizers encodes the {chat!r} chat differently"
    for skip in (True, False):
        assert ov.decode(reference, skip_special_tokens=skip) == hf.decode(reference, skip_special_tokens=skip)
    for message in messages:
        text = message["content"]
        ids = hf.encode(text, add_special_tokens=False)
        assert ov_encode(ov, text) == ids
        for skip in (True, False):
            assert (ov.decode(ids, skip_special_tokens=skip) if ids else "") == hf.decode(ids, skip_special_tokens=skip)
        if chat != "special token text":  # Phi-3 itself prepends "▁" after an added token ("</s> ?")
            assert hf.decode(ids) == text


@pytest.mark.slow
def test_exported_hf_tokenizer_gives_the_reference_ids(exported: Path) -> None:
    """The optimum engine's tokenizer: what the export saved beside the model."""
    tok = AutoTokenizer.from_pretrained(exported)
    assert [text for text, ids in VECTORS if tok.encode(text, add_special_tokens=False) != ids] == []
    assert tok.chat_template == PHI3_CHAT_TEMPLATE


@pytest.mark.slow
@pytest.mark.parametrize("text", STREAMED + [text for text, _ in VECTORS if text])
def test_streaming_a_token_at_a_time_keeps_every_character(ov, hf, text: str) -> None:
    """Byte-fallback pieces decode to U+FFFD on their own; the stream must hold them back,
    and must not lose the spaces a decoder strips from the start of what it decodes."""
    ids = hf.encode(text, add_special_tokens=False)
    chunks = stream(lambda window: ov.decode(window), ids)
    assert not any("\ufffd" in chunk for chunk in chunks), chunks
    assert "".join(chunks) == text, chunks


@pytest.mark.slow
@pytest.mark.parametrize("text", STREAMED)
def test_genai_text_streamer_keeps_every_character(ov, hf, text: str) -> None:
    """The streamer openvino-genai's pipelines use when the genai engine passes a callback."""
    import openvino_genai

    chunks: list[str] = []
    streamer = openvino_genai.TextStreamer(ov, lambda chunk: chunks.append(chunk) or False)
    for i in hf.encode(text, add_special_tokens=False):
        streamer.write(i)
    streamer.end()
    assert not any("\ufffd" in chunk for chunk in chunks), chunks
    assert "".join(chunks) == text, chunks
