"""Topic grammar and AMQP pattern matching, checked against a reference matcher."""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from zmqbus import TopicError, validate_topic
from zmqbus.core.topics import compile_pattern, tail_prefix, tail_word


def reference_match(pattern: list[str], topic: list[str]) -> bool:
    """The AMQP definition, word by word, with no cleverness."""
    if not pattern:
        return not topic
    head, rest = pattern[0], pattern[1:]
    if head == "#":
        return reference_match(rest, topic) or (bool(topic) and reference_match(pattern, topic[1:]))
    if not topic:
        return False
    return (head == "*" or head == topic[0]) and reference_match(rest, topic[1:])


@pytest.mark.parametrize(
    "pattern,topic,expected",
    [
        ("a.b.#", "a.b", True),
        ("a.b.#", "a.b.c.d", True),
        ("a.b.#", "a.bc", False),
        ("a.b.#", "a", False),
        ("order.start.request.#", "order.start.request", True),
        ("*.error", "payment.error", True),
        ("*.error", "a.payment.error", False),
        ("*.error", "error", False),
        ("#.error", "error", True),
        ("#.error", "a.b.error", True),
        ("a.*.c", "a.b.c", True),
        ("a.*.c", "a.c", False),
        ("a.#.c", "a.c", True),
        ("a.#.c", "a.x.y.c", True),
        ("a.#.c", "a.x.y.d", False),
        ("#", "anything.at.all", True),
        ("#.#", "x", True),
        ("a.b", "a.b", True),
        ("a.b", "a.b.c", False),
        ("*", "a", True),
        ("*", "a.b", False),
    ],
)
def test_examples(pattern: str, topic: str, expected: bool) -> None:
    assert compile_pattern(pattern).match(topic) is expected
    assert reference_match(pattern.split("."), topic.split(".")) is expected


@pytest.mark.parametrize(
    "pattern,prefix",
    [
        ("a.b.#", b"a.b"),
        ("a.*.c", b"a."),
        ("a.b", b"a.b\x00"),
        ("#", b""),
        ("*.error", b"\x01error\x00"),  # a tail pattern (PROTOCOL.md section 2.3)
        ("#.status.update", b"\x01update\x00"),
        ("*.a.#", b""),
        ("a.#.b", b"a"),
        ("order.start.request.#", b"order.start.request"),
    ],
)
def test_prefix(pattern: str, prefix: bytes) -> None:
    compiled = compile_pattern(pattern)
    assert compiled.prefix == prefix
    assert compiled.receives_all is (prefix == b"")


@pytest.mark.parametrize("bad", ["", ".a", "a.", "a..b", "a.b*", "a#.b", "a b", "a.\x00", "x" * 256])
def test_invalid_patterns_and_topics(bad: str) -> None:
    with pytest.raises(TopicError):
        compile_pattern(bad)
    with pytest.raises(TopicError):
        validate_topic(bad)


@pytest.mark.parametrize("bad", ["a.*", "#", "a.#.b"])
def test_wildcards_are_not_topics(bad: str) -> None:
    with pytest.raises(TopicError, match="wildcards are for patterns"):
        validate_topic(bad)


def test_topic_error_is_value_error() -> None:
    with pytest.raises(ValueError):
        validate_topic("a..b")
    with pytest.raises(TopicError):
        validate_topic(42)  # type: ignore[arg-type]


words = st.sampled_from(["a", "b", "c", "ab", "order", "x1"])
topics = st.lists(words, min_size=1, max_size=6)
patterns = st.lists(st.one_of(words, st.just("*"), st.just("#")), min_size=1, max_size=6)


@settings(max_examples=1500, deadline=None)
@given(patterns, topics)
def test_matches_reference(pattern: list[str], topic: list[str]) -> None:
    compiled = compile_pattern(".".join(pattern))
    text = ".".join(topic)
    expected = reference_match(pattern, topic)
    assert compiled.match(text) is expected
    if expected:
        # The SUB prefix must never filter out a frame (topic, NUL, payload) the pattern matches: the
        # ordinary frame, or for a tail pattern the tail copy a publisher sends under the topic's last word.
        frame = text.encode() + b"\x00\x9e"
        if compiled.tail is not None:
            assert tail_word(text) == compiled.tail
            frame = tail_prefix(tail_word(text)) + frame
        assert frame.startswith(compiled.prefix)


@settings(max_examples=300, deadline=None)
@given(st.text(min_size=1, max_size=40))
def test_arbitrary_text_never_crashes(text: str) -> None:
    try:
        compiled = compile_pattern(text)
    except TopicError:
        return
    assert isinstance(compiled.match(text.replace("*", "x").replace("#", "x")), bool)
