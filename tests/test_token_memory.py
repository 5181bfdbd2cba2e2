"""TokenMemory: earlier turns keep the ids the model read and wrote. Fast, no model: the
tokenizer here is one id per character, with "#" as the only special token."""

from __future__ import annotations

from phi3ui.engine import TokenMemory


def encode(text: str) -> list[int]:
    return [ord(c) for c in text]


def special(token: int) -> bool:
    return token == ord("#")


def test_remembered_start_keeps_its_ids_when_the_rest_starts_with_a_special_token() -> None:
    memory = TokenMemory()
    memory.remember("Q1A1", [1, 2, 3])  # as generated: not what encode("Q1A1") gives
    assert memory.encode("Q1A1#Q2", encode, special) == [1, 2, 3, *encode("#Q2")]


def test_the_longest_remembered_start_wins() -> None:
    memory = TokenMemory()
    memory.remember("Q1", [1])
    memory.remember("Q1A1#Q2A2", [2])
    assert memory.encode("Q1A1#Q2A2#Q3", encode, special) == [2, *encode("#Q3")]


def test_no_splice_unless_the_cut_is_at_a_special_token() -> None:
    """A cut inside text could merge differently; the whole prompt is encoded instead."""
    memory = TokenMemory()
    memory.remember("Q1A", [1, 2])
    assert memory.encode("Q1A1#Q2", encode, special) == encode("Q1A1#Q2")


def test_an_edited_conversation_is_encoded_afresh() -> None:
    memory = TokenMemory()
    memory.remember("Q1A1", [1, 2, 3])
    assert memory.encode("Q1 edited#Q2", encode, special) == encode("Q1 edited#Q2")


def test_memory_is_bounded_and_forgets_the_oldest_first() -> None:
    memory = TokenMemory(size=2)
    for n in range(3):
        memory.remember(f"T{n}", [n])
    assert memory.encode("T0#", encode, special) == encode("T0#")
    assert memory.encode("T2#", encode, special) == [2, *encode("#")]
