"""Real inference on the bundled SmolLM2-135M-Instruct int4, on every engine."""

from __future__ import annotations

import threading
import time

import pytest

from phi3ui.chat import ChatBackend
from phi3ui.engines import Stats, load_engine, resolve_device
from phi3ui.settings import GenerationSettings, RuntimeSettings

pytestmark = pytest.mark.slow

SPECIAL = ("<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|end|>", "<|assistant|>", "<|user|>")


def ask(engine, message: str, history=(), **settings) -> tuple[list[str], Stats]:
    prompt = engine.render([*history, {"role": "user", "content": message}])
    chunks = list(engine.stream(prompt, GenerationSettings(**settings)))
    return chunks[:-1], chunks[-1]


def test_greedy_answer_knows_paris(bundled_engine):
    chunks, stats = ask(bundled_engine, "What is the capital of France?", max_new_tokens=32)
    assert "Paris" in stats.text
    assert "".join(chunks) == stats.text
    assert stats.answer_tokens > 1 and stats.prompt_tokens > 5 and not stats.stopped
    assert stats.ttft_s > 0 and stats.tokens_per_s > 0


@pytest.mark.parametrize("message", [
    "Translate 'good morning, my friend' into Chinese.",
    "Write 'thank you very much' in Japanese.",
    "Reply with three emoji that describe the sea.",
    "Write a Python function that adds two numbers, in a code block.",
])
def test_streamed_text_is_clean(bundled_engine, message):
    chunks, stats = ask(bundled_engine, message, max_new_tokens=48)
    joined = "".join(chunks)
    assert joined == stats.text
    assert "\ufffd" not in joined
    assert not any(token in joined for token in SPECIAL)


def test_multibyte_characters_survive_streaming(bundled_engine):
    """A small model will not write Chinese on request, but it continues a repetition; each
    of these characters spans several byte-level tokens."""
    line = "你好世界，こんにちは 🙂👍🏽🚀\n"
    chunks = list(bundled_engine.stream(line * 6, GenerationSettings(max_new_tokens=40)))
    stats = chunks.pop()
    assert "".join(chunks) == stats.text
    assert all("\ufffd" not in c for c in chunks)
    assert stats.text.startswith(line)  # it did write them, split across many tokens


def test_stop_ends_generation_within_a_token_or_two(bundled_engine):
    stop = threading.Event()
    prompt = bundled_engine.render([{"role": "user", "content": "Write a long story about a dragon."}])
    chunks = []
    for chunk in bundled_engine.stream(prompt, GenerationSettings(max_new_tokens=400), stop):
        if isinstance(chunk, Stats):
            stats, ended = chunk, time.perf_counter()
            break
        chunks.append(chunk)
        if len(chunks) == 5:
            stop.set()
            stopped_at = time.perf_counter()
    assert stats.stopped
    assert "".join(chunks) == stats.text
    per_token = stats.total_s / stats.answer_tokens
    # The generating thread may be a few tokens ahead of this loop; it then stops at once.
    assert stats.answer_tokens < 20
    assert ended - stopped_at < 3 * per_token + 0.2


def test_closing_the_stream_stops_generation(bundled_engine):
    prompt = bundled_engine.render([{"role": "user", "content": "Count from 1 to 500."}])
    stream = bundled_engine.stream(prompt, GenerationSettings(max_new_tokens=500))
    next(stream)
    start = time.perf_counter()
    stream.close()
    assert time.perf_counter() - start < 2
    assert not bundled_engine.lock.locked()  # the next answer can start at once
    _, stats = ask(bundled_engine, "Say hi.", max_new_tokens=4)
    assert stats.answer_tokens >= 1


def test_sampling_with_a_seed_repeats_and_without_varies(bundled_engine):
    seeded = dict(temperature=1.2, top_p=1.0, top_k=0, max_new_tokens=16, seed=1234)
    question = "Name a colour."
    first = ask(bundled_engine, question, **seeded)[1].text
    assert ask(bundled_engine, question, **seeded)[1].text == first
    unseeded = {**seeded, "seed": None}
    answers = {ask(bundled_engine, question, **unseeded)[1].text for _ in range(4)}
    assert len(answers) > 1


def test_answers_after_an_edit_do_not_reuse_a_stale_cache(bundled_engine):
    """Turn 2 after an edited turn 1 must equal a cold answer to the edited conversation."""
    settings = dict(max_new_tokens=24)
    first = ask(bundled_engine, "What is the capital of France?", **settings)[1].text
    history = [{"role": "user", "content": "What is the capital of France?"},
               {"role": "assistant", "content": first}]
    ask(bundled_engine, "And of Italy?", history, **settings)
    edited = [{"role": "user", "content": "What is the capital of Spain?"},
              {"role": "assistant", "content": first}]
    warm = ask(bundled_engine, "And of Italy?", edited, **settings)[1].text
    ask(bundled_engine, "Unrelated question to disturb the cache: what is 2+2?", **settings)
    again = ask(bundled_engine, "And of Italy?", edited, **settings)[1].text
    assert warm == again


def test_backend_reply_refuses_bad_input_with_clear_messages(bundled, engine_name):
    backend = ChatBackend()
    backend.loaded = None
    with pytest.raises(Exception, match="No model is loaded"):
        list(backend.reply([], "hi", GenerationSettings()))


def test_unknown_device_falls_back_to_cpu_with_a_message():
    device, warning = resolve_device("GPU.7")
    assert device == "CPU"
    assert "GPU.7" in warning and "not available" in warning
    assert resolve_device("CPU") == ("CPU", None)


def test_next_turn_feeds_the_ids_the_model_wrote(bundled_engine):
    """The next prompt starts with the earlier prompt's ids and the answer's ids as generated,
    not as the answer's text re-tokenises (which can differ and would end the prefix-cache
    hit there); the rest is encoded as usual."""
    engine = bundled_engine
    history = [{"role": "user", "content": "Name a colour."}]
    first = engine.render(history)
    _, stats = ask(engine, "Name a colour.", max_new_tokens=12)
    history += [{"role": "assistant", "content": stats.text}, {"role": "user", "content": "Another one?"}]
    second = engine.render(history)
    remembered = engine.prompt_ids(first + stats.text)
    assert remembered[:stats.prompt_tokens] == engine.encode(first)
    assert engine.decode(remembered[stats.prompt_tokens:]) == stats.text
    ids = engine.prompt_ids(second)
    assert ids[:len(remembered)] == remembered and engine.decode(ids) == engine.decode(engine.encode(second))


def test_answer_ids_that_do_not_re_tokenise_the_same_are_kept(bundled_engine):
    """Stand in for a model's own, non-canonical ids: the same text split differently."""
    engine = bundled_engine
    prompt = engine.render([{"role": "user", "content": "Say hello."}])
    own = engine.encode("Hel") + engine.encode("lo there")
    assert own != engine.encode("Hello there"), "the stand-in must differ from the canonical ids"
    engine.memory.remember(prompt + "Hello there", engine.encode(prompt) + own)
    history = [{"role": "user", "content": "Say hello."}, {"role": "assistant", "content": "Hello there"},
               {"role": "user", "content": "And goodbye?"}]
    second = engine.render(history)
    ids = engine.prompt_ids(second)
    assert ids[:len(engine.encode(prompt)) + len(own)] == engine.encode(prompt) + own
    assert engine.decode(ids) == engine.decode(engine.encode(second))
    # The context budget counts the ids the model will read, not the shorter re-tokenised text.
    assert engine.count_tokens(second) == len(ids) > len(engine.encode(second))
    _, stats = ask(engine, "And goodbye?", history=history[:2], max_new_tokens=8)
    assert stats.answer_tokens > 0 and stats.prompt_tokens == len(ids)


def test_model_cache_keeps_the_compiled_graph_not_a_second_copy_of_the_weights(bundled, engine_name, tmp_path):
    """CACHE_MODE=OPTIMIZE_SIZE: a cached start reads the weights from the export, so a
    cached configuration does not cost a second copy of them on disk."""
    runtime = RuntimeSettings(engine=engine_name, properties={"CACHE_DIR": str(tmp_path)})
    answers = []
    for _ in range(2):  # the first start writes the cache, the second loads from it
        engine = load_engine(bundled.folder, runtime)
        answers.append(ask(engine, "What is the capital of France?", max_new_tokens=8)[1].text)
        engine.close()
        del engine
    blobs = sum(blob.stat().st_size for blob in tmp_path.rglob("*.blob"))
    assert 0 < blobs < (bundled.folder / "openvino_model.bin").stat().st_size / 2
    assert answers[0] == answers[1] and "Paris" in answers[0]
