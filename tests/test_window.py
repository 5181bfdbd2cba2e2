"""Window management for long chats (issue 19): cuts that keep the KV cache useful.

The fast tests use a real tokenizer with Phi-3's chat template (`phi3_tokenizer`); the
slow one drives the real app on the bundled model past a small `--context-window`.
"""

from __future__ import annotations

import itertools
import re

import pytest

from phi3ui import prompt as prompts
from phi3ui import window
from phi3ui.settings import Limits, SettingsError

SYSTEM = "You are a helpful assistant."


def render_with(tokenizer):
    return lambda messages: tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def counter(tokenizer):
    return lambda text: len(tokenizer(text, add_special_tokens=False).input_ids)


def question(i: int) -> str:
    return f"Question {i}: tell me about topic {i} " + "in some detail " * (i % 5)


def answer(i: int) -> str:
    return f"Answer {i}: " + "here is what I know about it " * (3 + i % 4)


def chat(tokenizer, turns: int, window_size: int, cut_to: float = 0.5, max_new_tokens: int = 40,
         costs: window.ExchangeCosts | None = None):
    """Play a chat turn by turn; each turn's Fitted and the history it was fitted on."""
    costs = costs or window.ExchangeCosts()
    history: list[dict] = []
    played = []
    for i in range(turns):
        fitted = prompts.fit(render_with(tokenizer), counter(tokenizer), system=SYSTEM, history=history,
                             message=question(i), max_new_tokens=max_new_tokens, window=window_size,
                             cut_to=cut_to, costs=costs)
        played.append((list(history), fitted))
        history += [{"role": "user", "content": question(i)}, {"role": "assistant", "content": answer(i)}]
    return played


def test_appending_turns_keeps_the_cut_until_the_window_overflows(phi3_tokenizer):
    played = chat(phi3_tokenizer, 60, 600)
    cuts = [i for i in range(1, len(played)) if played[i][1].dropped_exchanges != played[i - 1][1].dropped_exchanges]
    assert cuts, "the chat must overflow the window"
    assert len(cuts) <= len(played) / 4, f"at most one turn in four re-reads the window, cuts at {cuts}"
    for i in range(1, len(played)):
        before, now = played[i - 1][1], played[i][1]
        assert now.used_tokens <= 600
        assert now.dropped_exchanges >= before.dropped_exchanges
        if i in cuts:
            # a cut frees a large share at once: what is kept is at most half the window
            assert now.used_tokens <= 300
            # and it was needed: with the previous cut this turn would not have fitted
            kept = played[i][0][2 * before.dropped_exchanges:]
            whole = prompts.fit(render_with(phi3_tokenizer), counter(phi3_tokenizer), system=SYSTEM,
                                history=kept, message=question(i), max_new_tokens=40, window=10**6)
            assert whole.used_tokens > 600
        else:
            # no cut: this prompt starts with the last one and its answer (a prefix-cache hit)
            assert now.prompt.startswith(before.prompt + answer(i - 1)), f"turn {i} changed the prompt's beginning"


def test_the_same_history_always_gives_the_same_cut(phi3_tokenizer):
    played = chat(phi3_tokenizer, 40, 500)
    assert played[-1][1].dropped_exchanges > 0
    for history, fitted in played[::7] + played[-3:]:
        # from scratch (no cached counts), as another replica or an API client's next call would
        again = prompts.fit(render_with(phi3_tokenizer), counter(phi3_tokenizer), system=SYSTEM, history=history,
                            message=question(len(history) // 2), max_new_tokens=40, window=500)
        assert (again.dropped_exchanges, again.prompt) == (fitted.dropped_exchanges, fitted.prompt)


def test_the_system_prompt_and_the_newest_exchange_are_kept(phi3_tokenizer):
    for history, fitted in chat(phi3_tokenizer, 30, 400)[5:]:
        i = len(history) // 2
        assert fitted.prompt.startswith(f"<|system|>\n{SYSTEM}<|end|>\n<|user|>\n")
        assert fitted.prompt.endswith(f"<|user|>\n{question(i)}<|end|>\n<|assistant|>\n")
    # the exchange right before the message stays whenever it fits, even when it is long
    long_answer = "word " * 150
    history = [{"role": "user", "content": "q0"}, {"role": "assistant", "content": "a0"},
               {"role": "user", "content": "q1"}, {"role": "assistant", "content": long_answer}]
    def fit(size):
        return prompts.fit(render_with(phi3_tokenizer), counter(phi3_tokenizer), system=SYSTEM, history=history,
                           message="And then?", max_new_tokens=40, window=size)

    fitted = fit(fit(10**6).used_tokens - 1)  # one token short: a cut, but not of the long exchange
    assert fitted.dropped_exchanges == 1 and long_answer in fitted.prompt


def test_a_message_too_long_for_the_window_is_refused(phi3_tokenizer):
    history = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    with pytest.raises(prompts.MessageTooLong, match="context window"):
        prompts.fit(render_with(phi3_tokenizer), counter(phi3_tokenizer), system=SYSTEM, history=history,
                    message="word " * 500, max_new_tokens=100, window=256)


def test_token_counts_are_the_counters(phi3_tokenizer):
    count = counter(phi3_tokenizer)
    costs = window.ExchangeCosts()
    for history, fitted in chat(phi3_tokenizer, 30, 500, costs=costs)[::5]:
        assert fitted.prompt_tokens == count(fitted.prompt)
        assert fitted.used_tokens == fitted.prompt_tokens + 40 <= 500
    # an exchange's cached cost is what it adds to a whole prompt, counted by the counter
    render = render_with(phi3_tokenizer)
    exchange = [{"role": "user", "content": question(3)}, {"role": "assistant", "content": answer(3)}]
    with_it = count(render(prompts.build(SYSTEM, exchange, "next")))
    without = count(render(prompts.build(SYSTEM, [], "next")))
    assert with_it - without == count(render(prompts.build(SYSTEM, exchange, window.PROBE))) - count(
        render(prompts.build(SYSTEM, [], window.PROBE)))
    # long chats stay cheap: the next turn counts only its new exchange and message
    played = chat(phi3_tokenizer, 30, 500, costs=costs)
    misses = costs.misses
    history, _ = played[-1]
    history = [*history, {"role": "user", "content": question(29)}, {"role": "assistant", "content": answer(29)}]
    prompts.fit(render, count, system=SYSTEM, history=history, message=question(30), max_new_tokens=40,
                window=500, costs=costs)
    assert costs.misses - misses <= 2


def test_cut_to_one_leaves_out_the_fewest_each_turn(phi3_tokenizer):
    """The old policy, kept for comparison: every turn after the first overflow cuts."""
    played = chat(phi3_tokenizer, 40, 500, cut_to=1.0)
    count, render = counter(phi3_tokenizer), render_with(phi3_tokenizer)
    for history, fitted in played[-10:]:
        n = fitted.dropped_exchanges
        one_fewer = prompts.fit(render, count, system=SYSTEM, history=history[2 * (n - 1):],
                                message=question(len(history) // 2), max_new_tokens=40, window=10**6)
        assert one_fewer.used_tokens > 500 >= fitted.used_tokens
    drops = [f.dropped_exchanges for _, f in played]
    assert sum(b != a for a, b in itertools.pairwise(drops)) > len(played) / 2


def test_replay_decides_from_counts():
    # exchanges of 100 tokens, messages of 20, 50 for the answer, a 700-token window: the
    # message after 7 exchanges overflows (770); the oldest go until at most 350 is used (two
    # exchanges kept: 270), and that cut holds until the window overflows again.
    starts = [window.replay([20] * (n + 1), [100] * n, max_new_tokens=50, window=700) for n in range(14)]
    assert starts == [0] * 7 + [5] * 5 + [10] * 2
    assert window.replay([20] * 8, [100] * 7, max_new_tokens=50, window=700, cut_to=1.0) == 1


def test_the_marker_sits_before_the_first_exchange_the_model_sees():
    def note(title):
        return {"role": "assistant", "content": "", "metadata": {"title": title}}

    display = [{"role": "assistant", "content": "Hello! Ask me anything."},
               {"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"}, note("0.1 s"),
               {"role": "user", "content": "q2"}, {"role": "assistant", "content": "a2"}, note("0.2 s"),
               {"role": "user", "content": "q3"}]
    def markers(chat):
        return [i for i, m in enumerate(chat) if (m.get("metadata") or {}).get("title") == window.CUT_TITLE]

    assert window.mark_cut(display, 0) == display
    marked = window.mark_cut(display, 2)  # the greeting and the first exchange
    assert markers(marked) == [4] and marked[5]["content"] == "q2"
    assert prompts.normalize(marked) == prompts.normalize(display)
    again = window.mark_cut(marked, 3)  # a new cut: the old marker goes
    assert len(markers(again)) == 1 and again[markers(again)[0] + 1]["content"] == "q3"
    assert window.mark_cut(again, 0) == display


def test_context_window_cap():
    assert Limits().window(4096) == 4096
    assert Limits(context_window=2048).window(4096) == 2048
    Limits(context_window=4096).check_window(4096)
    with pytest.raises(SettingsError, match="larger than the model's"):
        Limits(context_window=8192).check_window(4096)
    with pytest.raises(SettingsError, match="at least 256"):
        Limits(context_window=100).check_window(4096)
    from phi3ui.server import parse_args

    assert parse_args(["--context-window", "1024"]).context_window == 1024
    with pytest.raises(SystemExit):
        parse_args(["--context-window", "255"])


# --- the real app ---------------------------------------------------------------------------
from tests.app_process import AppProcess


@pytest.mark.slow
@pytest.mark.server
def test_a_chat_past_the_window_keeps_answering_and_reuses_the_cache(bundled):
    """Through /chat on the bundled model with a 512-token window: the chat passes the
    window several times and keeps answering. The observable that a turn after a cut reads
    only its new tokens is the server's log line per answer, which reports how many of the
    prompt's tokens the engine had to compute: prompt ids minus the longest common start
    with what the engine read and wrote before (genai's prefix cache re-uses exactly such a
    start; it exposes no per-request hit count). Its time to first token follows it."""
    from gradio_client import Client

    app = AppProcess("--model", "bundled", "--context-window", "512").wait_ready()
    try:
        assert "512-token window (capped" in app.output() and "Warm-up" in app.output()
        client = Client(app.url, verbose=False)
        history: list[dict] = []
        for i in range(16):
            message = f"Turn {i}. " + "Please tell me one more fact about the sea, briefly. " * 3
            text = ""
            for text in client.submit(message=message, history=history, max_new_tokens=24, api_name="/chat"):
                pass
            assert isinstance(text, str) and text.strip(), f"turn {i} gave no answer"
            history += [{"role": "user", "content": message}, {"role": "assistant", "content": text}]
        lines = re.findall(r"window: (\d+) prompt tokens, (\d+) computed, (\d+) exchanges? left out", app.output())
        assert len(lines) == 16
        dropped = [int(d) for _, _, d in lines]
        assert dropped[-1] > 0, "the chat must pass the window"
        cut_turns = [i for i in range(1, 16) if dropped[i] != dropped[i - 1]]
        assert len(cut_turns) <= 4, f"at most one turn in four re-reads the window: {cut_turns}"
        for i in range(1, 16):
            prompt, computed, _ = map(int, lines[i])
            if i not in cut_turns:
                assert computed <= 120, f"turn {i} computed {computed} of {prompt} prompt tokens"
    finally:
        app.stop()
