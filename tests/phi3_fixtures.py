"""Tiny stand-ins for Phi-3-mini-4k-instruct, built offline for the test suite.

The real model cannot be downloaded here (no hub access) and is too big for fast tests,
so these helpers build, from nothing but installed libraries:

* a real byte-level BPE tokenizer (trained with `tokenizers` on the text below) that
  carries Phi-3's special tokens, in Phi-3's order and with Phi-3's flags, and Phi-3's
  own chat template;
* a random-weight `Phi3ForCausalLM` with the real architecture but tiny sizes, saved as
  a Hugging Face folder that optimum-intel can export to OpenVINO (int4, group size 128).

Token ids mirror the real ones shifted down: Phi-3's 32000 + k is 1000 + k here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Final

import torch
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoTokenizer,
    GenerationConfig,
    Phi3Config,
    Phi3ForCausalLM,
    PreTrainedTokenizerFast,
)

# microsoft/Phi-3-mini-4k-instruct tokenizer_config.json "chat_template", current revision
# (the one that renders the system message; early revisions dropped it, transformers #30545).
PHI3_CHAT_TEMPLATE: Final[str] = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}"
    "{{'<|system|>\n' + message['content'] + '<|end|>\n'}}"
    "{% elif message['role'] == 'user' %}"
    "{{'<|user|>\n' + message['content'] + '<|end|>\n'}}"
    "{% elif message['role'] == 'assistant' %}"
    "{{'<|assistant|>\n' + message['content'] + '<|end|>\n'}}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}"
    "{{ '<|assistant|>\n' }}"
    "{% else %}"
    "{{ eos_token }}"
    "{% endif %}"
)

# Size of the trained part of the vocabulary; Phi-3's is 32000. Special tokens follow it.
BASE_VOCAB_SIZE: Final[int] = 1000

# Phi-3's leading special tokens (ids 0, 1, 2 there and here).
UNK, BOS, EOS_SENTENCE = "<unk>", "<s>", "</s>"

# Phi-3's added tokens in id order (32000..32010 there, 1000..1010 here).
ENDOFTEXT, ASSISTANT, SYSTEM, END, USER = (
    "<|endoftext|>",
    "<|assistant|>",
    "<|system|>",
    "<|end|>",
    "<|user|>",
)
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

# Ids the rest of the suite can rely on (Phi-3's id minus 31000 for the added tokens).
TOKEN_IDS: Final[dict[str, int]] = {
    UNK: 0,
    BOS: 1,
    EOS_SENTENCE: 2,
    **{token: BASE_VOCAB_SIZE + i for i, token in enumerate(ADDED_TOKENS)},
}
# Like the real generation_config.json's [32000, 32001, 32007].
GENERATION_EOS_IDS: Final[list[int]] = [TOKEN_IDS[ENDOFTEXT], TOKEN_IDS[ASSISTANT], TOKEN_IDS[END]]
VOCAB_SIZE: Final[int] = BASE_VOCAB_SIZE + len(ADDED_TOKENS)  # 1011, the tokenizer's length

# Training text for the BPE: plain English in the register of a chat assistant, plus
# digits and punctuation. Bytes the text lacks (CJK, emoji, ...) still encode, since the
# byte-level alphabet gives every byte its own token.
_CORPUS: Final[str] = """\
The assistant is a small language model that runs on the computer in front of you. It reads
the whole conversation, one message at a time, and then writes an answer word by word. When
you ask a question, it tries to be helpful, honest and brief. If it does not know something,
it should say so instead of making up an answer that only sounds right.

Hello! How can I help you today? I would like to know the capital of France. The capital of
France is Paris, a city on the river Seine. Paris is famous for its museums, its bridges,
its cafes and the tall iron tower that was built for a world fair more than a century ago.
What about Germany? The capital of Germany is Berlin, and the capital of Italy is Rome.

Please write a short poem about the sea. The sea is wide and grey this morning; the waves
come in slowly, fold over, and go back again. A boat waits near the harbour wall, and the
birds call above the water while the sun rises over the hills behind the old town.

Can you explain how a computer stores numbers? Inside the machine every number is written
with only two digits, zero and one. Eight of these bits make a byte, and a byte can hold any
value from 0 to 255. Larger numbers use several bytes together: two bytes reach 65535, and
four bytes reach a little more than four billion. Text is stored the same way, because each
letter is given a number first, and the numbers are saved as bytes.

Here is a simple recipe for bread. Mix 500 grams of flour with 10 grams of salt, 7 grams of
dry yeast and 350 millilitres of warm water. Knead the dough for ten minutes, let it rise for
one hour, shape it, and bake it at 220 degrees for about 35 minutes, until the crust is brown.

Thank you, that was very useful. Could you summarize our discussion in three points? First,
we talked about capital cities in Europe. Second, we wrote a poem about the sea. Third, we
looked at how computers keep numbers and text as bytes, and we baked some bread as well.

Models are trained on large collections of documents, books and web pages. During training
the model learns which word is likely to come next, given all the words before it. Later it
is tuned to follow instructions and to answer in a friendly, safe and useful way. Because it
has a limited context window, very long conversations must be shortened before they are sent.

Yesterday my neighbour asked whether quantization makes a model worse. Usually the weights
are squeezed from sixteen bits down to four or eight, which saves memory and bandwidth, so
generation gets quicker on an ordinary laptop processor. Quality drops a little, but careful
grouping of channels keeps most of it. Stop the answer when the special end token appears.

Journey notes: Monday we hiked across green valleys toward a quiet lake; Tuesday brought
heavy rain, thunder and mud, so we stayed inside playing chess, reading novels and drinking
hot chocolate. Wednesday was sunny again. Everybody agreed the mountain village was lovely.

Numbers and symbols: 0 1 2 3 4 5 6 7 8 9 10 11 12 20 42 64 99 100 128 256 512 1000 1024 2024
3.14 2.718 1,000,000 50% $20 #1 @home a+b=c x-y (1/2) [list] {key: value} "quoted" 'single'
one, two; three: four! five? six... seven - eight _ nine * ten & eleven | twelve ~ ^ ` \\ < >
"""


def _train_bpe() -> Tokenizer:
    """Train the byte-level BPE on `_CORPUS`: real merges, any unicode text round-trips."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=BASE_VOCAB_SIZE,
        special_tokens=[UNK, BOS, EOS_SENTENCE],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator([_CORPUS], trainer=trainer)
    if tokenizer.get_vocab_size() != BASE_VOCAB_SIZE:
        raise RuntimeError(
            f"BPE trained {tokenizer.get_vocab_size()} tokens, expected {BASE_VOCAB_SIZE}: "
            "the corpus is too small for the requested vocabulary"
        )
    return tokenizer


def _add_phi3_tokens(tokenizer: Tokenizer) -> None:
    """Append Phi-3's added tokens with its flags (rstrip on all but <|endoftext|>).

    rstrip=True is what the real tokenizer.json has: the newline the chat template puts
    after `<|user|>`, `<|end|>`, ... is swallowed by the special token when encoding, so
    the model sees the same ids Phi-3 would. openvino_tokenizers honours it too.
    """
    tokenizer.add_special_tokens(
        [
            AddedToken(token, normalized=False, special=True, rstrip=token != ENDOFTEXT)
            for token in ADDED_TOKENS
        ]
    )
    for token, token_id in TOKEN_IDS.items():
        if tokenizer.token_to_id(token) != token_id:
            raise RuntimeError(f"{token} got id {tokenizer.token_to_id(token)}, expected {token_id}")


def make_phi3_tokenizer(dest: Path) -> PreTrainedTokenizerFast:
    """Build a small real Phi-3-like fast tokenizer, save it to `dest`, and load it back.

    Returned from disk so callers test exactly what an exporter will read. Nothing is
    added when encoding (no BOS/EOS post-processor), as with the current Phi-3 config.
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    backend = _train_bpe()
    _add_phi3_tokens(backend)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS,
        eos_token=ENDOFTEXT,
        unk_token=UNK,
        pad_token=ENDOFTEXT,
        chat_template=PHI3_CHAT_TEMPLATE,
        model_max_length=4096,
        padding_side="left",
        clean_up_tokenization_spaces=False,
    )
    tokenizer.save_pretrained(dest)
    return AutoTokenizer.from_pretrained(dest)


def tiny_phi3_config() -> Phi3Config:
    """Phi-3-mini's architecture at toy size.

    Every linear layer's input width (256 or 512) is a multiple of 128, so NNCF int4 with
    group size 128 applies to all of them; head_dim is 64. Other fields follow the real
    config.json (rope 10000, sliding window 2047, untied embeddings, bos 1, eos/pad
    <|endoftext|>).
    """
    return Phi3Config(
        vocab_size=VOCAB_SIZE,
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=4096,
        original_max_position_embeddings=4096,
        sliding_window=2047,
        rms_norm_eps=1e-5,
        hidden_act="silu",
        tie_word_embeddings=False,
        bos_token_id=TOKEN_IDS[BOS],
        eos_token_id=TOKEN_IDS[ENDOFTEXT],
        pad_token_id=TOKEN_IDS[ENDOFTEXT],
    )


def make_tiny_phi3(dest: Path, seed: int = 0) -> Path:
    """Save a tiny random-weight Phi3ForCausalLM, its tokenizer and generation config.

    vocab_size equals the tokenizer's length (1011), not a rounded-up size, so even a
    random model never emits an id the tokenizer/detokenizer cannot map. Weights depend
    only on `seed` (the global torch RNG is left untouched). Returns `dest`.
    """
    dest = Path(dest)
    make_phi3_tokenizer(dest)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Phi3ForCausalLM(tiny_phi3_config()).eval()
    model.generation_config = GenerationConfig(
        bos_token_id=TOKEN_IDS[BOS],
        eos_token_id=GENERATION_EOS_IDS,
        pad_token_id=TOKEN_IDS[ENDOFTEXT],
    )
    model.save_pretrained(dest, safe_serialization=True)
    _check_generation_config(dest)
    return dest


def _check_generation_config(dest: Path) -> None:
    """Fail early if save_pretrained dropped the list of stop ids the app relies on."""
    saved = json.loads((dest / "generation_config.json").read_text())
    if saved.get("eos_token_id") != GENERATION_EOS_IDS:
        raise RuntimeError(f"generation_config.json eos_token_id is {saved.get('eos_token_id')}")
