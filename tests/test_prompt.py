"""Prompt formatting and context budgeting: fast, with a real tokenizer built here."""

from __future__ import annotations

import pytest

from phi3ui import prompt as prompts
from phi3ui import window

SYSTEM = "You are a helpful assistant."
TURNS = [("Hi!", "Hello! How can I help?"), ("What is 2+2?", "4."), ("And 3+3?", "6.")]


def conversation(n_turns: int) -> tuple[list[dict], str]:
    """The first n-1 exchanges as history, and the n-th user message."""
    history = []
    for user, assistant in TURNS[: n_turns - 1]:
        history += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    return history, TURNS[n_turns - 1][0]


def expected(n_turns: int, system: bool) -> str:
    text = f"<|system|>\n{SYSTEM}<|end|>\n" if system else ""
    for user, assistant in TURNS[: n_turns - 1]:
        text += f"<|user|>\n{user}<|end|>\n<|assistant|>\n{assistant}<|end|>\n"
    return text + f"<|user|>\n{TURNS[n_turns - 1][0]}<|end|>\n<|assistant|>\n"


def render_with(tokenizer):
    return lambda messages: tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


@pytest.mark.parametrize("system", [True, False])
@pytest.mark.parametrize("n_turns", [1, 2, 3])
def test_phi3_prompt_is_exact(phi3_tokenizer, n_turns, system):
    history, message = conversation(n_turns)
    messages = prompts.build(SYSTEM if system else "", history, message)
    assert render_with(phi3_tokenizer)(messages) == expected(n_turns, system)


def test_phi3_template_keeps_system(phi3_tokenizer):
    assert prompts.supports_system(render_with(phi3_tokenizer))


def test_special_tokens_are_single_ids_and_not_added_twice(phi3_tokenizer):
    for token in ("<|system|>", "<|user|>", "<|assistant|>", "<|end|>", "<|endoftext|>"):
        assert len(phi3_tokenizer(token, add_special_tokens=False).input_ids) == 1, token
    text = expected(1, True)
    ids = phi3_tokenizer(text, add_special_tokens=False).input_ids
    assert ids[0] == phi3_tokenizer.convert_tokens_to_ids("<|system|>")
    assert ids.count(phi3_tokenizer.convert_tokens_to_ids("<|system|>")) == 1


def test_template_without_system_role_gets_it_in_first_turn():
    def drops_system(messages):
        return "".join(f"[{m['role']}]{m['content']}" for m in messages if m["role"] != "system")

    assert not prompts.supports_system(drops_system)
    built = prompts.build(SYSTEM, [], "Hi", system_ok=False)
    assert built == [{"role": "user", "content": f"{SYSTEM}\n\nHi"}]


def test_normalize_accepts_text_parts_and_skips_page_notes():
    history = [
        {"role": "user", "content": [{"type": "text", "text": "Hi "}, {"type": "text", "text": "there"}]},
        {"role": "assistant", "content": "Hello"},
        {"role": "assistant", "content": "", "metadata": {"title": "0.1 s to first token"}},
    ]
    assert prompts.normalize(history) == [
        {"role": "user", "content": "Hi there"},
        {"role": "assistant", "content": "Hello"},
    ]


@pytest.mark.parametrize("bad", [
    "not a list",
    [{"role": "user"}],
    [{"role": "system", "content": "sneaky"}],
    [{"role": "user", "content": {"file": "/etc/passwd"}}],
    [{"role": "user", "content": 42}],
    ["hello"],
])
def test_normalize_refuses_malformed_history(bad):
    with pytest.raises(prompts.PromptError):
        prompts.normalize(bad)


def fit(tokenizer, history, message, max_new_tokens, window, system=SYSTEM):
    return prompts.fit(render_with(tokenizer), lambda t: len(tokenizer(t, add_special_tokens=False).input_ids),
                       system=system, history=history, message=message,
                       max_new_tokens=max_new_tokens, window=window)


def test_fit_keeps_everything_when_it_fits(phi3_tokenizer):
    history, message = conversation(3)
    fitted = fit(phi3_tokenizer, history, message, 16, 4096)
    assert fitted.dropped_exchanges == 0
    assert fitted.prompt == expected(3, True)
    assert fitted.prompt_tokens == len(phi3_tokenizer(fitted.prompt, add_special_tokens=False).input_ids)


def test_fit_drops_oldest_exchanges_but_keeps_system(phi3_tokenizer):
    history, message = conversation(3)
    full = fit(phi3_tokenizer, history, message, 16, 4096).prompt_tokens
    assert fit(phi3_tokenizer, history, message, 16, full + 16).dropped_exchanges == 0  # exactly full
    fitted = fit(phi3_tokenizer, history, message, 16, full + 16 - 1)
    assert fitted.dropped_exchanges == 1
    assert fitted.prompt.startswith(f"<|system|>\n{SYSTEM}<|end|>\n<|user|>\n{TURNS[1][0]}")
    assert fitted.prompt_tokens + 16 <= full + 15


def test_fit_refuses_a_message_that_alone_is_too_long(phi3_tokenizer):
    with pytest.raises(prompts.MessageTooLong, match="context window"):
        fit(phi3_tokenizer, [], "word " * 500, 100, 256)


def test_template_without_system_role_gets_it_in_the_first_user_turn_after_a_greeting():
    greeting = {"role": "assistant", "content": "Hello! Ask me anything."}
    built = prompts.build(SYSTEM, [greeting, {"role": "user", "content": "Hi"}], "And now?", system_ok=False)
    assert built[0] == greeting
    assert built[1] == {"role": "user", "content": f"{SYSTEM}\n\nHi"}
    assert built[2] == {"role": "user", "content": "And now?"}


def test_metadata_that_is_not_an_object_is_refused_clearly():
    with pytest.raises(prompts.PromptError, match="metadata"):
        prompts.normalize([{"role": "user", "content": "a", "metadata": "x"}])


def test_fit_leaves_out_the_fewest_exchanges_however_long_the_chat(phi3_tokenizer):
    """With cut_to=1.0, what leaving out one exchange at a time would, in a few renders."""
    history = []
    for i in range(60):
        history += [{"role": "user", "content": f"Question {i}: " + "word " * (i % 7)},
                    {"role": "assistant", "content": f"Answer {i}."}]
    renders = []

    def render(messages):
        renders.append(len(messages))
        return render_with(phi3_tokenizer)(messages)

    def count(text):
        return len(phi3_tokenizer(text, add_special_tokens=False).input_ids)

    # Each exchange is counted once and cached (a chat's exchanges come one per turn); after
    # that a fit renders a few whole prompts. cut_to=1.0 is the leave-out-the-fewest policy.
    costs = window.ExchangeCosts()
    prompts.fit(render, count, system=SYSTEM, history=history, message="Last?", max_new_tokens=50,
                window=300, costs=costs)
    for window_size in (300, 700, 1000):
        renders.clear()
        fitted = prompts.fit(render, count, system=SYSTEM, history=history, message="Last?", max_new_tokens=50,
                             window=window_size, costs=costs, cut_to=1.0)
        assert len(renders) <= 10
        assert fitted.used_tokens <= window_size and 0 < fitted.dropped_exchanges < 60
        one_more = history[2 * (fitted.dropped_exchanges - 1):]
        longer = prompts.fit(render, count, system=SYSTEM, history=one_more, message="Last?",
                             max_new_tokens=50, window=10**6)
        assert longer.used_tokens > window_size, "one exchange fewer left out would not have fitted"


def test_newest_keeps_whole_exchanges_within_both_limits():
    history = []
    for i in range(5):
        history += [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "a" * 10}]
    assert prompts.newest(history, 100, 10**6) == (history, 0)
    assert prompts.newest(history, 4, 10**6) == (history[6:], 3)
    assert prompts.newest(history, 5, 10**6) == (history[6:], 3), "never half an exchange"
    assert prompts.newest(history, 100, 25) == (history[6:], 3)
    assert prompts.newest(history, 100, 5) == ([], 5)
