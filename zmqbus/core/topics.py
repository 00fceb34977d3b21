"""Dotted topics and AMQP-style patterns.

Rules of this module:

* A *topic* is 1-255 UTF-8 bytes of non-empty words joined by ``.``; a word
  holds no ``*``, ``#``, whitespace or control character (so never the NUL
  that ends the topic inside a frame).
* A *pattern* is a topic whose words may also be exactly ``*`` (one word) or
  ``#`` (zero or more words), so ``a.b.#`` matches ``a.b`` and ``a.b.c.d``.
* ZeroMQ filters only by byte prefix, so every pattern compiles to the longest
  literal byte prefix it implies (a pattern without wildcards: the topic and
  the NUL that ends it in a frame, so ZeroMQ filters it exactly) (what the SUB socket subscribes to) plus an
  exact matcher applied in the process.
* A pattern that starts with a wildcard and ends with a literal word (a *tail
  pattern*: ``#.error``, ``*.status.update``) subscribes the *tail prefix*
  of that word (:func:`tail_prefix`: ``0x01``, the word, NUL): publishers
  that see such a subscription also send a *tail copy* of each message whose
  topic ends with the word (PROTOCOL.md section 2.3), so the subscriber does
  not receive the whole bus. Any other pattern that starts with a wildcard
  (``#``, ``*.order.#``) has the empty prefix and receives *all* traffic;
  :attr:`Pattern.receives_all` makes that cost visible.

Pure code: no sockets, no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache

from .errors import TopicError

__all__ = [
    "MAX_TOPIC_BYTES",
    "Pattern",
    "compile_pattern",
    "validate_topic",
    "RESERVED_PREFIX",
    "TAIL_MARK",
    "tail_prefix",
    "tail_word",
    "split_tail_copy",
]

MAX_TOPIC_BYTES = 255
#: Topics whose first word is ``_zmqbus`` carry control traffic (see PROTOCOL.md).
RESERVED_PREFIX = "_zmqbus."

#: The first byte of a tail copy's frame and of a tail subscription (no topic starts with a control character).
TAIL_MARK = b"\x01"

_BAD_WORD = re.compile(r"[*#\s\x00-\x1f\x7f]")


def _check_words(text: str, what: str, wildcards: bool) -> list[str]:
    if not isinstance(text, str):
        raise TopicError(f"{what} must be a str, not {type(text).__name__}")
    size = len(text.encode("utf-8", "surrogatepass"))
    if size == 0 or size > MAX_TOPIC_BYTES:
        raise TopicError(f"{what} {text!r} must be 1 to {MAX_TOPIC_BYTES} bytes long")
    words = text.split(".")
    for word in words:
        if wildcards and word in ("*", "#"):
            continue
        if not word:
            raise TopicError(f"{what} {text!r} has an empty word (leading, trailing or double dot)")
        if _BAD_WORD.search(word):
            hint = " (wildcards must be whole words)" if wildcards else " (wildcards are for patterns)"
            raise TopicError(f"{what} {text!r}: word {word!r} has a forbidden character{hint}")
    return words


@lru_cache(maxsize=4096)
def validate_topic(topic: str) -> str:
    """Return ``topic`` unchanged if it is a valid topic, else raise :class:`TopicError`.

    Cached: publishing the same topic again costs one dictionary lookup.
    """
    _check_words(topic, "topic", wildcards=False)
    return topic


@dataclass(frozen=True)
class Pattern:
    """A compiled subscription pattern.

    ``prefix`` is what the SUB socket subscribes to; ``match(topic)`` is the
    exact AMQP test. ``receives_all`` is true when the prefix is empty, i.e. the
    socket receives every message on the bus and filters in Python.
    """

    text: str
    prefix: bytes
    match: Callable[[str], bool] = field(repr=False, compare=False)
    #: A tail pattern's last word (``prefix`` is then its :func:`tail_prefix`); None for other patterns.
    tail: str | None = None

    @property
    def receives_all(self) -> bool:
        return not self.prefix


def tail_prefix(word: str) -> bytes:
    """What a tail pattern ending in ``word`` subscribes to, and what starts the tail copies it receives."""
    return TAIL_MARK + word.encode() + b"\x00"


def tail_word(topic: str) -> str:
    """The last word of ``topic`` (what a tail copy is sent under)."""
    return topic.rpartition(".")[2]


def split_tail_copy(frame: bytes) -> bytes | None:
    """The ordinary frame inside a tail copy (``0x01 word NUL`` + frame), or None if it is not one."""
    cut = frame.find(0, 1, 257)  # the word is 1 to 255 bytes
    if cut < 2:
        return None
    return frame[cut + 1 :]


def _exact(literal: str) -> Callable[[str], bool]:
    return literal.__eq__


def _subtree(base: str) -> Callable[[str], bool]:
    dotted = base + "."
    return lambda topic: topic == base or topic.startswith(dotted)


def _always(topic: str) -> bool:
    return True


def _regex(words: list[str]) -> Callable[[str], bool]:
    # Match against "." + topic: every word, literal or wildcard, then starts
    # with a dot, and "#" is simply zero or more ".word" groups.
    parts = []
    for word in words:
        if word == "#":
            parts.append(r"(?:\.[^.]+)*")
        elif word == "*":
            parts.append(r"\.[^.]+")
        else:
            parts.append(r"\." + re.escape(word))
    fullmatch = re.compile("".join(parts)).fullmatch
    return lambda topic: fullmatch("." + topic) is not None


@lru_cache(maxsize=1024)
def compile_pattern(pattern: str) -> Pattern:
    """Compile ``pattern`` into a :class:`Pattern`; raise :class:`TopicError` if invalid."""
    words = _check_words(pattern, "pattern", wildcards=True)
    # "#.#" means the same as "#"; collapsing keeps the regex linear.
    collapsed: list[str] = []
    for word in words:
        if not (word == "#" and collapsed and collapsed[-1] == "#"):
            collapsed.append(word)
    literal: list[str] = []
    for word in collapsed:
        if word in ("*", "#"):
            break
        literal.append(word)
    rest = collapsed[len(literal) :]
    base = ".".join(literal)
    if not rest:
        return Pattern(pattern, base.encode() + b"\x00", _exact(base))
    if not literal and collapsed[-1] not in ("*", "#"):
        # a tail pattern (#.error, *.a.b): its last word routes it (PROTOCOL.md section 2.3)
        return Pattern(pattern, tail_prefix(collapsed[-1]), _regex(collapsed), collapsed[-1])
    if rest[0] == "*":
        prefix = (base + ".") if base else ""
    else:  # "#" may match zero words, so "a.#" must also receive "a" itself
        prefix = base
    if rest == ["#"]:
        matcher = _subtree(base) if base else _always
    else:
        matcher = _regex(collapsed)
    return Pattern(pattern, prefix.encode(), matcher)
