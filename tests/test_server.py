"""The real app as a subprocess, driven through gradio_client's `/chat` endpoint."""

from __future__ import annotations

import pytest
from gradio_client import Client

pytestmark = pytest.mark.server


@pytest.fixture(scope="module")
def client(app_server) -> Client:
    return Client(app_server.url, verbose=False)


def test_chat_streams_an_answer(client):
    job = client.submit(message="What is the capital of France?", history=[], max_new_tokens=32,
                        api_name="/chat")
    updates = list(job)
    assert len(updates) > 1  # streamed, not one reply at the end
    assert all(later.startswith(earlier) for earlier, later in zip(updates, updates[1:]))
    assert "Paris" in updates[-1]


def test_second_turn_with_history(client):
    first = client.predict(message="What is the capital of France?", history=[], max_new_tokens=32,
                           api_name="/chat")
    history = [{"role": "user", "content": "What is the capital of France?"},
               {"role": "assistant", "content": first}]
    second = client.predict(message="And what is the capital of Germany?", history=history,
                            max_new_tokens=32, api_name="/chat")
    assert "Berlin" in second


def test_history_in_gradio_parts_format_is_read_as_the_same_history(client):
    plain = [{"role": "user", "content": "What is the capital of France?"},
             {"role": "assistant", "content": "Paris."}]
    parts = [{"role": m["role"], "content": [{"type": "text", "text": m["content"]}]} for m in plain]
    asked = dict(message="And of Germany?", max_new_tokens=16, api_name="/chat")
    answer = client.predict(history=parts, **asked)
    assert answer == client.predict(history=plain, **asked)  # greedy: the same prompt, the same answer
    assert "Berlin" in answer


def test_a_history_beyond_the_limits_loses_its_oldest_exchanges_not_the_answer(client):
    """Over 200 messages: the oldest are left out like exchanges that do not fit the window."""
    history = []
    for i in range(150):
        history += [{"role": "user", "content": f"Note {i}: remember the number {i}."},
                    {"role": "assistant", "content": "Noted."}]
    answer = client.predict(message="What is the capital of France?", history=history, max_new_tokens=32,
                            api_name="/chat")
    assert "Paris" in answer


@pytest.mark.parametrize("kwargs, message", [
    ({"history": "not a list"}, "History must be a list"),
    ({"max_new_tokens": 100000}, "Max new tokens must be between"),
    ({"temperature": -1}, "Temperature must be between"),
    ({"history": [{"role": "tool", "content": "x"}]}, "roles must be"),
])
def test_bad_calls_get_clear_errors(client, kwargs, message):
    with pytest.raises(Exception, match=message):
        client.predict(**{"message": "hi", "history": [], **kwargs}, api_name="/chat")
    assert client.predict(message="Say hi.", history=[], max_new_tokens=4, api_name="/chat")


@pytest.mark.browser
def test_page_says_which_model_is_loaded(app_server, browser):
    from tests.browsing import model_info

    shown = model_info(browser, app_server.url)
    assert "bundled" in shown and "int4-sym-g64-r0.6" in shown
