"""Fair-use limits (phi3ui/fairness.py): one answer at a time, a request rate per client,
bounded memory, and how a client is told apart. A fake clock, no sleeps, no server."""

from __future__ import annotations

import threading

import pytest

from phi3ui import server
from phi3ui.fairness import FairUse, Gate, LimitReached, client_address


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def gate(rate: int = 0, **policy) -> tuple[Gate, Clock]:
    clock = Clock()
    return Gate(FairUse(rate_per_minute=rate, **policy), clock=clock), clock


def test_one_answer_at_a_time_per_session_even_with_limits_off() -> None:
    g, _ = gate(rate=0)
    ticket = g.admit("1.2.3.4", "tab-a")
    with pytest.raises(LimitReached) as refused:
        g.admit("1.2.3.4", "tab-a")
    assert refused.value.limit == "busy" and "One answer at a time" in str(refused.value)
    assert "this chat" in str(refused.value) and "retry in 2 s" in str(refused.value)
    g.admit("1.2.3.4", "tab-b").release()  # another session: off means no per-address limit
    ticket.release()
    ticket.release()  # twice is harmless
    g.admit("1.2.3.4", "tab-a").release()


def test_one_answer_at_a_time_per_client_when_on() -> None:
    """An API client claims a new session each call; the address still counts once."""
    g, _ = gate(rate=100)
    with g.admit("1.2.3.4", "s1"):
        with pytest.raises(LimitReached, match="this address already has one"):
            g.admit("1.2.3.4", "s2")
        g.admit("5.6.7.8", "s3").release()  # someone else is not affected
    g.admit("1.2.3.4", "s2").release()  # the `with` released it


def test_rate_limit_refuses_with_the_wait_and_refills() -> None:
    g, clock = gate(rate=6)  # a token every 10 s, up to 6 at once
    for _ in range(6):
        g.admit("1.2.3.4", None).release()
    with pytest.raises(LimitReached) as refused:
        g.admit("1.2.3.4", None)
    assert refused.value.limit == "rate" and refused.value.retry_after_s == 10
    assert str(refused.value) == "Too many requests: at most 6 a minute from one address. Try again in 10 s."
    clock.now += 4
    with pytest.raises(LimitReached, match="Try again in 6 s"):
        g.admit("1.2.3.4", None)
    g.admit("9.9.9.9", None).release()  # other clients have their own bucket
    clock.now += 6
    g.admit("1.2.3.4", None).release()
    with pytest.raises(LimitReached):
        g.admit("1.2.3.4", None)


def test_refusals_cost_no_tokens() -> None:
    g, _ = gate(rate=2)
    with g.admit("1.2.3.4", "s"):
        for _ in range(50):  # a flood while one answer runs
            with pytest.raises(LimitReached, match="One answer at a time"):
                g.admit("1.2.3.4", "s")
    g.admit("1.2.3.4", "s").release()  # the second of two tokens is still there


def test_idle_clients_are_forgotten_and_memory_is_bounded() -> None:
    g, clock = gate(rate=10, max_clients=50)
    for i in range(200):
        g.admit(f"10.0.{i // 256}.{i % 256}", None).release()
    assert g.tracked() == 50, "the least recently seen go beyond max_clients"
    clock.now += 61  # every bucket has refilled
    g.admit("1.2.3.4", None).release()
    assert g.tracked() == 1


def test_a_client_with_an_answer_in_flight_is_kept() -> None:
    g, clock = gate(rate=2)
    running = g.admit("1.2.3.4", None)
    clock.now += 120
    g.admit("5.6.7.8", None).release()
    assert g.tracked() == 2
    running.release()


def test_gate_is_thread_safe() -> None:
    """Many threads at once, over and over: never two answers at a time for one client,
    and never more admitted than its bucket holds."""
    g, _ = gate(rate=30)
    admitted = {"client-0": 0, "client-1": 0}
    active = {"client-0": 0, "client-1": 0}
    overlaps: list[str] = []
    count = threading.Lock()
    start = threading.Barrier(40)

    def request(i: int) -> None:
        client = f"client-{i % 2}"
        start.wait()
        for _ in range(50):
            try:
                ticket = g.admit(client, f"s{i}")
            except LimitReached:
                continue
            with count:
                active[client] += 1
                admitted[client] += 1
                if active[client] > 1:
                    overlaps.append(client)
            with count:
                active[client] -= 1
            ticket.release()

    threads = [threading.Thread(target=request, args=(i,)) for i in range(40)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert not overlaps
    assert admitted == {"client-0": 30, "client-1": 30}  # the clock stands still: no refill


@pytest.mark.parametrize(("host", "forwarded", "trust", "expected"), [
    ("127.0.0.1", None, False, "127.0.0.1"),
    ("127.0.0.1", "203.0.113.7", False, "127.0.0.1"),  # not behind a trusted proxy: the header is ignored
    ("10.16.3.80", "203.0.113.7, 10.0.0.2", True, "203.0.113.7"),
    ("10.16.3.80", " , ", True, "10.16.3.80"),
    (None, None, False, "unknown"),
])
def test_client_address(host, forwarded, trust, expected) -> None:
    assert client_address(host, forwarded, trust) == expected


def test_launch_defaults(monkeypatch) -> None:
    for name in ("SPACE_ID", "PHI3UI_RATE_LIMIT", "PHI3UI_MAX_NEW_TOKENS_CAP", "PHI3UI_TRUST_PROXY",
                 "PHI3UI_LOCK_SETTINGS", "PHI3UI_SHARE"):
        monkeypatch.delenv(name, raising=False)
    local = server.parse_args([])
    assert (local.rate_limit, local.max_new_tokens_cap, local.trust_proxy) == (0, 4096, False)
    shared = server.parse_args(["--share", "--lock-settings"])
    assert (shared.rate_limit, shared.max_new_tokens_cap) == (20, 1024)
    assert server.parse_args(["--share", "--rate-limit", "0"]).rate_limit == 0
    monkeypatch.setenv("SPACE_ID", "someone/phi3ui")
    space = server.parse_args([])
    assert (space.rate_limit, space.max_new_tokens_cap, space.trust_proxy) == (20, 1024, True)
    monkeypatch.setenv("PHI3UI_RATE_LIMIT", "5")
    monkeypatch.setenv("PHI3UI_MAX_NEW_TOKENS_CAP", "256")
    monkeypatch.setenv("PHI3UI_TRUST_PROXY", "0")
    env = server.parse_args([])
    assert (env.rate_limit, env.max_new_tokens_cap, env.trust_proxy) == (5, 256, False)


@pytest.mark.parametrize(("flag", "value"), [("--rate-limit", "-1"), ("--max-new-tokens-cap", "0")])
def test_nonsense_limits_are_refused(flag, value, capsys) -> None:
    with pytest.raises(SystemExit):
        server.parse_args([flag, value])
    assert flag in capsys.readouterr().err
