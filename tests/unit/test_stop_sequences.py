"""StopSequenceBuffer: streamed text is cut before the first stop sequence, however it is chunked."""

from __future__ import annotations

import random

from model_runtime.text_generation import StopSequenceBuffer


def test_without_stops_text_passes_straight_through() -> None:
    buffer = StopSequenceBuffer(())
    assert buffer.push("hello ") == ("hello ", False)
    assert buffer.push("wor") == ("wor", False)
    assert buffer.flush() == ""


def test_text_without_any_stop_character_is_emitted_at_once() -> None:
    buffer = StopSequenceBuffer(("STOP",))
    assert buffer.push("hello there") == ("hello there", False)
    assert buffer.flush() == ""


def test_stop_inside_one_push_cuts_the_text_before_it() -> None:
    buffer = StopSequenceBuffer(("STOP",))
    assert buffer.push("abcSTOPdef") == ("abc", True)


def test_text_that_is_exactly_the_stop_emits_nothing() -> None:
    buffer = StopSequenceBuffer(("STOP",))
    assert buffer.push("STOP") == ("", True)


def test_stop_split_across_pushes_is_detected() -> None:
    buffer = StopSequenceBuffer(("STOP",))
    assert buffer.push("hello ST") == ("hello ", False)
    assert buffer.push("O") == ("", False)
    assert buffer.push("P and more") == ("", True)


def test_prefix_of_a_stop_is_held_back_then_released_when_it_is_not_one() -> None:
    buffer = StopSequenceBuffer(("<|end|>",))
    assert buffer.push("x <|en") == ("x ", False)
    assert buffer.push("v") == ("<|env", False)


def test_flush_returns_the_held_back_text() -> None:
    buffer = StopSequenceBuffer(("<|end|>",))
    assert buffer.push("answer<|") == ("answer", False)
    assert buffer.flush() == "<|"
    assert buffer.flush() == ""


def test_earliest_of_several_stops_wins_whatever_their_order() -> None:
    assert StopSequenceBuffer(("B", "A")).push("xxAyyB") == ("xx", True)
    assert StopSequenceBuffer(("A", "B")).push("xxByyA") == ("xx", True)


def test_held_text_before_another_stop_is_emitted_with_that_stop() -> None:
    buffer = StopSequenceBuffer(("abc", "X"))
    assert buffer.push("ab") == ("", False)
    assert buffer.push("X") == ("ab", True)


def test_overlapping_prefix_holds_only_what_could_still_match() -> None:
    buffer = StopSequenceBuffer(("aab",))
    assert buffer.push("aa") == ("", False)
    assert buffer.push("a") == ("a", False)
    assert buffer.push("b") == ("", True)


def test_prefix_of_the_longer_stop_is_held_even_when_a_shorter_one_does_not_match() -> None:
    buffer = StopSequenceBuffer(("#", "<|end|>"))
    assert buffer.push("ok <|end") == ("ok ", False)
    assert buffer.push("|") == ("", False)
    assert buffer.push(">tail") == ("", True)


STOPS = ("<|end|>", "###")
ALPHABET = "ab <|end>#"


def _random_chunks(text: str, rng: random.Random) -> list[str]:
    chunks, i = [], 0
    while i < len(text):
        step = rng.randint(1, 4)
        chunks.append(text[i : i + step])
        i += step
    return chunks


def test_any_chunking_emits_exactly_the_text_before_the_first_stop() -> None:
    for case in range(300):
        _check_one_chunking(case)


def _check_one_chunking(case: int) -> None:
    rng = random.Random(case)
    text = "".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, 40)))
    if case % 3 == 0:
        # Make sure a good share of the cases really contain a stop.
        cut = rng.randint(0, len(text))
        text = text[:cut] + rng.choice(STOPS) + text[cut:]
    hits = [i for i in (text.find(s) for s in STOPS) if i >= 0]
    expected = text[: min(hits)] if hits else text

    buffer = StopSequenceBuffer(STOPS)
    emitted, stopped = "", False
    for chunk in _random_chunks(text, rng):
        out, stopped = buffer.push(chunk)
        emitted += out
        assert expected.startswith(emitted)
        assert not any(s in emitted for s in STOPS)
        if stopped:
            break
    if not stopped:
        emitted += buffer.flush()

    assert stopped == bool(hits)
    assert emitted == expected
