"""The tokenizer of microsoft/Phi-3-mini-4k-instruct, rebuilt offline.

The hub is not reachable from CI, yet the tests and the Phi-3-shaped benchmark model should
read exactly what Phi-3 reads. llama.cpp ships Phi-3's vocabulary (pieces, scores, types) with
46 strings and the ids Phi-3's own tokenizer gives them (`tests/phi3_vocab/`). From that,
`phi3_tokenizer_folder` writes the Hugging Face files Microsoft publishes (tokenizer.json,
tokenizer.model, tokenizer_config.json with Phi-3's added tokens and chat template) and refuses
to return a folder that does not reproduce every reference id. The same file's metadata gives
the model's sizes (`phi3_mini_config`), for random-weight models of Phi-3's shape.

    from tests.phi3_tokenizer import phi3_tokenizer_folder
    tokenizer = AutoTokenizer.from_pretrained(phi3_tokenizer_folder(Path("phi3-tok")))
"""

from __future__ import annotations

import functools
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

from phi3ui.files import staged
from phi3ui.prompt import PHI3_CHAT_TEMPLATE

if TYPE_CHECKING:
    from transformers import Phi3Config

VOCAB_DIR: Final = Path(__file__).resolve().parent / "phi3_vocab"
GGUF: Final = VOCAB_DIR / "ggml-vocab-phi-3.gguf"
_TEST_SEPARATOR: Final = "\n__ggml_vocab_test__\n"

BASE_VOCAB: Final = 32000  # sentencepiece pieces; the added tokens follow
UNK_ID, BOS_ID, ENDOFTEXT_ID, ASSISTANT_ID, END_ID = 0, 1, 32000, 32001, 32007
GENERATION_EOS_IDS: Final = [ENDOFTEXT_ID, ASSISTANT_ID, END_ID]  # Phi-3's generation_config.json
FILES: Final = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")  # config last: the marker


@dataclass(frozen=True)
class Phi3Sizes:
    """Phi-3-mini's shape from the gguf metadata, named as `transformers.Phi3Config` names it.

    vocab_size (32,064, the embedding rows) is larger than the tokenizer (32,011 tokens): the
    last 53 rows are padding no text encodes to, and decoders skip them.
    """

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    max_position_embeddings: int
    original_max_position_embeddings: int
    rms_norm_eps: float
    rope_theta: float


@functools.lru_cache(maxsize=1)
def _gguf() -> dict:
    """Every gguf field as plain Python values (reading takes about two seconds)."""
    from gguf import GGUFReader

    return {name: field.contents() for name, field in GGUFReader(GGUF).fields.items()}


def phi3_sizes() -> Phi3Sizes:
    meta = _gguf()
    return Phi3Sizes(
        vocab_size=len(meta["tokenizer.ggml.tokens"]),
        hidden_size=meta["phi3.embedding_length"],
        intermediate_size=meta["phi3.feed_forward_length"],
        num_hidden_layers=meta["phi3.block_count"],
        num_attention_heads=meta["phi3.attention.head_count"],
        num_key_value_heads=meta["phi3.attention.head_count_kv"],
        max_position_embeddings=meta["phi3.context_length"],
        original_max_position_embeddings=meta["phi3.rope.scaling.original_context_length"],
        rms_norm_eps=round(meta["phi3.attention.layer_norm_rms_epsilon"], 9),  # stored as float32
        rope_theta=meta["phi3.rope.freq_base"],
    )


def phi3_generation_config() -> dict:
    """Phi-3's generation_config.json: generation stops at any of the three end tokens."""
    return {"bos_token_id": BOS_ID, "eos_token_id": list(GENERATION_EOS_IDS), "pad_token_id": ENDOFTEXT_ID}


def phi3_mini_config(**overrides) -> Phi3Config:
    """`transformers.Phi3Config` of Phi-3-mini-4k-instruct (its published config.json: sizes from
    the gguf metadata, sliding window 2047, untied embeddings, bos 1, eos/pad <|endoftext|>);
    `overrides` shrink it for tests."""
    from transformers import Phi3Config

    fields = {**asdict(phi3_sizes()), "sliding_window": 2047, "hidden_act": "silu",
              "tie_word_embeddings": False, "bos_token_id": BOS_ID, "eos_token_id": ENDOFTEXT_ID,
              "pad_token_id": ENDOFTEXT_ID}
    return Phi3Config(**{**fields, **overrides})


def reference_vectors() -> list[tuple[str, list[int]]]:
    """llama.cpp's test strings with the ids Phi-3's original tokenizer gave them (no BOS)."""
    texts = (VOCAB_DIR / f"{GGUF.name}.inp").read_text(encoding="utf-8").split(_TEST_SEPARATOR)
    lines = (VOCAB_DIR / f"{GGUF.name}.out").read_text(encoding="utf-8").split("\n")
    if texts[-1] != "" or lines[-1] != "" or len(texts) != len(lines):  # each entry is terminated
        raise RuntimeError(f"{VOCAB_DIR}: .inp and .out do not pair up")
    return [(text, [int(i) for i in line.split()]) for text, line in zip(texts[:-1], lines[:-1])]


def _added_tokens() -> dict[int, dict]:
    """Phi-3's added tokens and their flags, as its tokenizer_config.json lists them.

    rstrip on the role tokens is what makes the newline the chat template writes after
    `<|user|>`, `<|end|>`, ... part of the token rather than a token of its own.
    """
    tokens = _gguf()["tokenizer.ggml.tokens"]
    added = {UNK_ID: ("<unk>", False, True), BOS_ID: ("<s>", False, True), 2: ("</s>", True, False)}
    for i in range(BASE_VOCAB, BASE_VOCAB + 11):  # <|endoftext|> .. <|user|>; later ids are padding
        added[i] = (tokens[i], tokens[i] != "<|endoftext|>", True)
    return {i: {"content": content, "lstrip": False, "normalized": False, "rstrip": rstrip,
                "single_word": False, "special": special} for i, (content, rstrip, special) in added.items()}


def _sentencepiece_model() -> bytes:
    """tokenizer.model: Llama-2's sentencepiece BPE settings over Phi-3's first 32,000 pieces."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    meta = _gguf()
    tokens, scores, types = (meta[f"tokenizer.ggml.{k}"] for k in ("tokens", "scores", "token_type"))
    model = pb.ModelProto()
    kinds = {UNK_ID: pb.ModelProto.SentencePiece.UNKNOWN, BOS_ID: pb.ModelProto.SentencePiece.CONTROL,
             2: pb.ModelProto.SentencePiece.CONTROL}
    for i in range(BASE_VOCAB):
        kind = kinds.get(i, pb.ModelProto.SentencePiece.BYTE if types[i] == 6 else pb.ModelProto.SentencePiece.NORMAL)
        model.pieces.add(piece=tokens[i], score=0.0 if i in kinds else scores[i], type=kind)
    spec = model.trainer_spec
    spec.model_type, spec.vocab_size, spec.byte_fallback = pb.TrainerSpec.BPE, BASE_VOCAB, True
    spec.unk_id, spec.bos_id, spec.eos_id, spec.pad_id = UNK_ID, BOS_ID, 2, -1
    spec.allow_whitespace_only_pieces = True
    norm = model.normalizer_spec
    norm.name, norm.add_dummy_prefix, norm.remove_extra_whitespaces, norm.escape_whitespaces = (
        "identity", True, False, True)
    return model.SerializeToString()


def _tokenizer_json() -> str:
    """tokenizer.json as Microsoft publishes it: BPE with byte fallback, "▁" prepended and
    spaces replaced by it (no pre-tokenizer, so runs of spaces become "▁▁" pieces), and
    nothing added when encoding (tokenizer_config's add_bos_token is false)."""
    from tokenizers import (
        AddedToken,
        Tokenizer,
        decoders,
        models,
        normalizers,
        processors,
    )

    meta = _gguf()
    tokens, scores = meta["tokenizer.ggml.tokens"], meta["tokenizer.ggml.scores"]
    types = meta["tokenizer.ggml.token_type"]
    vocab = {tokens[i]: i for i in range(BASE_VOCAB)}
    # sentencepiece BPE joins the adjacent pair whose joined piece scores highest; as a merge
    # list, every split of a normal piece into two pieces, ranked by that piece's score.
    ranked = []
    for piece, i in vocab.items():
        if types[i] == 1:
            splits = [(piece[:k], piece[k:]) for k in range(1, len(piece))]
            ranked += sorted(((-scores[i], vocab[a], vocab[b]), (a, b)) for a, b in splits if a in vocab and b in vocab)
    merges = [pair for _, pair in sorted(ranked, key=lambda r: r[0][0])]  # stable: ties keep id order
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", fuse_unk=True, byte_fallback=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    tok.post_processor = processors.TemplateProcessing(single="$A:0", pair="$A:0 $B:1")
    for i, flags in sorted(_added_tokens().items()):
        token = AddedToken(flags["content"], rstrip=flags["rstrip"], normalized=False, special=flags["special"])
        if flags["special"]:
            tok.add_special_tokens([token])
        else:
            tok.add_tokens([token])
        if tok.token_to_id(flags["content"]) != i:
            raise RuntimeError(f"{flags['content']} got id {tok.token_to_id(flags['content'])}, expected {i}")
    return tok.to_str(pretty=True)


def _tokenizer_config() -> dict:
    return {
        "add_bos_token": False,
        "add_eos_token": False,
        "added_tokens_decoder": {str(i): flags for i, flags in _added_tokens().items()},
        "bos_token": "<s>",
        "chat_template": PHI3_CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|endoftext|>",
        "legacy": False,
        "model_max_length": 4096,
        "pad_token": "<|endoftext|>",
        "padding_side": "left",
        "sp_model_kwargs": {},
        # Microsoft's file says "LlamaTokenizer". transformers 5.5.4 honours that only beside a
        # config.json of model_type phi3 (then it loads tokenizer.json as is); on its own, its
        # LlamaTokenizer rebuilds the pipeline with a Metaspace pre-tokenizer that does not
        # prepend "▁" to text that starts with a space (" Hello" -> 15043, not 29871 15043).
        # This class loads tokenizer.json unchanged in both cases.
        "tokenizer_class": "PreTrainedTokenizerFast",
        "unk_token": "<unk>",
        "use_default_system_prompt": False,
    }


def check_folder(folder: Path) -> None:
    """Raise unless the folder's fast and sentencepiece tokenizers give every reference id,
    decode them back to the text, and keep Phi-3's special tokens and template."""
    import sentencepiece
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    slow = sentencepiece.SentencePieceProcessor(model_file=str(folder / "tokenizer.model"))
    wrong = []
    for text, ids in reference_vectors():
        got = {"fast": tok.encode(text, add_special_tokens=False), "default": tok(text).input_ids,
               "sentencepiece": slow.encode(text)}
        wrong += [f"{name} {text!r}: {value} != {ids}" for name, value in got.items() if value != ids]
        for name, back in (("fast", tok.decode(ids)), ("sentencepiece", slow.decode(ids))):
            if back != text:
                wrong.append(f"{name} decode {ids}: {back!r} != {text!r}")
    for i, flags in _added_tokens().items():
        if tok.convert_tokens_to_ids(flags["content"]) != i or tok.encode(flags["content"], add_special_tokens=False) != [i]:
            wrong.append(f"{flags['content']} is not the single id {i}")
    if tok.chat_template != PHI3_CHAT_TEMPLATE or len(tok) != BASE_VOCAB + 11:
        wrong.append(f"chat template or length ({len(tok)}) differ from Phi-3's")
    if wrong:
        raise RuntimeError(f"{folder} is not Phi-3's tokenizer:\n  " + "\n  ".join(wrong))


def phi3_tokenizer_folder(dest: Path) -> Path:
    """Write Phi-3's tokenizer files into `dest` (created if missing) and return `dest`.

    Built and checked in a temporary folder beside `dest`, then put in place, so a
    folder that has tokenizer_config.json is complete; if it has all the files, nothing is
    done. `dest` may already hold other files (a model folder being assembled)."""
    dest = Path(dest)
    if all((dest / name).is_file() for name in FILES):
        return dest
    with staged(dest, last="tokenizer_config.json") as tmp:
        tmp.mkdir()
        (tmp / "tokenizer.json").write_text(_tokenizer_json(), encoding="utf-8")
        (tmp / "tokenizer.model").write_bytes(_sentencepiece_model())
        (tmp / "tokenizer_config.json").write_text(
            json.dumps(_tokenizer_config(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        check_folder(tmp)
    return dest
