"""Real inference on the bundled SmolLM2-135M-Instruct int4, on every engine."""

from __future__ import annotations

import logging
import subprocess
import sys
import threading

import pytest

from phi3ui.answer import Stats
from phi3ui.chat import ChatBackend
from phi3ui.engines import load_engine, resolve_device
from phi3ui.settings import GenerationSettings, RuntimeSettings
from tests.waiting import wait_until

pytestmark = pytest.mark.slow

SPECIAL = ("<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|end|>", "<|assistant|>", "<|user|>")


def ask(engine, message: str, history=(), **settings) -> tuple[list[str], Stats]:
    prompt = engine.render([*history, {"role": "user", "content": message}])
    answer = engine.answer(prompt, GenerationSettings(**settings))
    return list(answer), answer.stats


def test_greedy_answer_knows_paris(bundled_engine):
    chunks, stats = ask(bundled_engine, "What is the capital of France?", max_new_tokens=32)
    assert "Paris" in stats.text
    assert "".join(chunks) == stats.text
    assert stats.answer_tokens > 1 and stats.prompt_tokens > 5 and not stats.stopped
    assert stats.ttft_s > 0 and stats.tokens_per_s > 0


def test_stop_strings_end_the_answer_before_them(bundled_engine):
    """The engine stops generating at a stop string; its text and stream leave it out."""
    full = ask(bundled_engine, "What is the capital of France?", max_new_tokens=32)[1]
    assert " Paris" in full.text and full.finish == "stop"
    for stop in ((" Paris", "zzz"), ("s Par",)):  # the second ends inside a token
        chunks, stats = ask(bundled_engine, "What is the capital of France?", max_new_tokens=32, stop=stop)
        assert "".join(chunks) == stats.text == full.text[:full.text.index(stop[0])]
        assert stats.finish == "stop" and stats.answer_tokens < full.answer_tokens


def test_finish_says_why_the_answer_ended(bundled_engine):
    assert ask(bundled_engine, "What is the capital of France?", max_new_tokens=5)[1].finish == "length"
    answer = bundled_engine.answer(bundled_engine.render([{"role": "user", "content": "Count to 500."}]),
                                   GenerationSettings(max_new_tokens=400))
    for i, _ in enumerate(answer):
        if i == 3:
            answer.stop()
    assert answer.stats.finish == "stopped"


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
    answer = bundled_engine.answer(line * 6, GenerationSettings(max_new_tokens=40))
    chunks, stats = list(answer), answer.stats
    assert "".join(chunks) == stats.text
    assert all("\ufffd" not in c for c in chunks)
    assert stats.text.startswith(line)  # it did write them, split across many tokens


def test_stop_ends_generation_within_a_token_or_two(bundled_engine):
    prompt = bundled_engine.render([{"role": "user", "content": "Write a long story about a dragon."}])
    answer = bundled_engine.answer(prompt, GenerationSettings(max_new_tokens=400))
    chunks = []
    for chunk in answer:
        chunks.append(chunk)
        if len(chunks) == 5:
            answer.stop()
    stats = answer.stats
    assert stats.stopped
    assert "".join(chunks) == stats.text
    # The generating thread may be a few tokens ahead of this loop; it then stops at once.
    # (How long the Stop takes, in tokens' time: bench/stop.py.)
    assert stats.answer_tokens < 20


def test_stop_before_the_first_token_means_it_never_starts(bundled_engine):
    prompt = bundled_engine.render([{"role": "user", "content": "Count from 1 to 500."}])
    answer = bundled_engine.answer(prompt, GenerationSettings(max_new_tokens=500))
    answer.stop()
    assert list(answer) == []
    assert answer.stats.stopped and answer.stats.answer_tokens == 0 and answer.stats.text == ""


def test_stop_while_waiting_for_a_slot_ends_the_wait(bundled_engine):
    prompt = bundled_engine.render([{"role": "user", "content": "Count from 1 to 500."}])
    first = bundled_engine.answer(prompt, GenerationSettings(max_new_tokens=500))
    reader = iter(first)
    next(reader)  # holds the engine's only slot
    waiting = bundled_engine.answer(prompt, GenerationSettings(max_new_tokens=500))
    got: list[list[str]] = []
    reader_thread = threading.Thread(target=lambda: got.append(list(waiting)))
    reader_thread.start()
    wait_until(lambda: bundled_engine.slots.waiting == 1, 120, "the second answer to wait for the slot", every_s=0.01)
    waiting.stop()
    reader_thread.join(120)  # a hang guard only
    assert not reader_thread.is_alive(), "the wait for the slot did not end with the Stop"
    assert got == [[]] and waiting.stats.stopped
    # the wait ended with the Stop, not with the slot: the first answer still holds it
    assert bundled_engine.slots.free == 0 and bundled_engine.slots.waiting == 0
    first.close()


def test_closing_the_answer_stops_generation(bundled_engine):
    prompt = bundled_engine.render([{"role": "user", "content": "Count from 1 to 500."}])
    answer = bundled_engine.answer(prompt, GenerationSettings(max_new_tokens=500))
    next(iter(answer))
    answer.close()  # returns once generation has ended (how soon: bench/stop.py)
    assert answer.stopped
    assert bundled_engine.slots.free == bundled_engine.concurrency, "the next answer can start at once"
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


def test_answers_after_an_edit_do_not_reuse_a_stale_cache(bundled, bundled_engine, engine_name):
    """Turn 2 after an edited turn 1 must equal the answer of a freshly loaded engine, whose
    cache has never seen the conversation."""
    settings = dict(max_new_tokens=24)
    first = ask(bundled_engine, "What is the capital of France?", **settings)[1].text
    history = [{"role": "user", "content": "What is the capital of France?"},
               {"role": "assistant", "content": first}]
    ask(bundled_engine, "And of Italy?", history, **settings)
    edited = [{"role": "user", "content": "What is the capital of Spain?"},
              {"role": "assistant", "content": first}]
    warm = ask(bundled_engine, "And of Italy?", edited, **settings)[1].text
    cold_engine = load_engine(bundled.folder, RuntimeSettings(engine=engine_name))
    try:
        cold = ask(cold_engine, "And of Italy?", edited, **settings)[1].text
    finally:
        cold_engine.close()
    assert warm == cold != ""


def test_backend_reply_refuses_bad_input_with_clear_messages(bundled, engine_name):
    backend = ChatBackend()
    backend.loaded = None
    with pytest.raises(Exception, match="No model is loaded"):
        backend.reply([], "hi", GenerationSettings())


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
    first = engine.render(history).text
    _, stats = ask(engine, "Name a colour.", max_new_tokens=12)
    history += [{"role": "assistant", "content": stats.text}, {"role": "user", "content": "Another one?"}]
    second = engine.render(history).text
    remembered = engine.prompt_ids(first + stats.text)
    assert remembered[:stats.prompt_tokens] == engine.encode(first)
    assert engine.decode(remembered[stats.prompt_tokens:]) == stats.text
    ids = engine.prompt_ids(second)
    assert ids[:len(remembered)] == remembered and engine.decode(ids) == engine.decode(engine.encode(second))


def test_answer_ids_that_do_not_re_tokenise_the_same_are_kept(bundled_engine):
    """Stand in for a model's own, non-canonical ids: the same text split differently."""
    engine = bundled_engine
    prompt = engine.render([{"role": "user", "content": "Say hello."}]).text
    own = engine.encode("Hel") + engine.encode("lo there")
    assert own != engine.encode("Hello there"), "the stand-in must differ from the canonical ids"
    engine.memory.remember(prompt + "Hello there", engine.encode(prompt) + own)
    history = [{"role": "user", "content": "Say hello."}, {"role": "assistant", "content": "Hello there"},
               {"role": "user", "content": "And goodbye?"}]
    second = engine.render(history).text
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


HOLD_THE_CACHE = """import sys
from phi3ui.engine import cache_turn
with cache_turn({"CACHE_DIR": sys.argv[1]}):
    print("held", flush=True)
    sys.stdin.readline()
"""


def test_a_load_waits_while_another_process_loads_with_the_same_model_cache(bundled, engine_name, tmp_path,
                                                                            caplog):
    """OpenVINO removes a cache entry it cannot read, even one another process is writing:
    a load takes its turn at the cache instead of compiling into it at the same time."""
    caplog.set_level(logging.INFO, logger="phi3ui.engine")
    other = subprocess.Popen([sys.executable, "-c", HOLD_THE_CACHE, str(tmp_path)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout.readline().strip() == "held"
        loaded = []
        load = threading.Thread(target=lambda: loaded.append(load_engine(
            bundled.folder, RuntimeSettings(engine=engine_name, properties={"CACHE_DIR": str(tmp_path)}))))
        load.start()
        wait_until(lambda: "Waiting for another load" in caplog.text, 120, "the load to wait for its turn")
        assert not list(tmp_path.glob("*.blob"))
        other.stdin.write("\n")
        other.stdin.flush()
        load.join(timeout=300)
    finally:
        if other.poll() is None:
            other.kill()
        other.wait()
    [engine] = loaded
    assert "Paris" in ask(engine, "What is the capital of France?", max_new_tokens=8)[1].text
    assert list(tmp_path.glob("*.blob"))
    engine.close()
