"""Per-key permissions: which topics a key may publish and subscribe, which services it may serve and call.

A policy file (TOML) names keys (the names of their files in the allow-list)::

    [keys.orders]
    publish = ["order.#", "status.orders"]
    subscribe = ["order.#", "payment.done"]
    serve = ["orders.*"]
    call = ["state.query", "payment.#"]

Contracts:

* **What a policy does not allow is denied**: a key the policy does not name
  may do nothing; a missing list allows nothing. ``"#"`` allows everything.
* Publishing and calling check the topic or service against the patterns
  (AMQP wildcards, as subscriptions use them).
* Subscribing is granted on literal prefixes, the only thing ZeroMQ filters
  on: a permitted pattern ``L.#`` grants the socket prefixes ``L.`` and
  ``L\\0`` (what ``L.#`` matches, exactly) and anything longer that starts
  with ``L.``; a permitted topic ``L`` grants ``L\\0``; ``#`` grants all.
  A zmqbus client subscribing ``L.#`` sends the prefix ``L`` (which would
  also receive ``Lx...``): :meth:`Policy.grant` narrows it to ``L.`` and
  ``L\\0``. A pattern with ``*`` grants nothing to subscribe (no prefix
  covers it exactly); permit a broader ``L.#`` instead.
* Control traffic (``_zmqbus.``: presence, discovery, probes) follows rules
  of its own, the same for every key (PROTOCOL.md section 12): an exact,
  typed set of topics, presence bound to the key that sends it, which must
  be allowed to ``serve`` what it announces. A policy does not list them.

Pure code: no sockets, no event loop.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .errors import Forbidden, SecurityError, TopicError
from .topics import RESERVED_PREFIX, TAIL_MARK, Pattern, compile_pattern, tail_prefix

__all__ = ["Permissions", "Policy", "SubscriptionLimits", "OwnPolicy"]

_RESERVED = RESERVED_PREFIX.encode()
_ACTIONS = ("publish", "subscribe", "serve", "call")


@dataclass(frozen=True)
class SubscriptionLimits:
    """Bounds on what subscribers make the forwarder (and every publisher) hold.

    Two kinds of bound, because libzmq keeps two kinds of state:

    * **Granted** subscriptions (``per_connection``, ``total``,
      ``total_bytes``): past them a subscription is refused
      (``refused["subscription_limit"]``). What is granted is held in the
      forwarder's tries and travels on to every publisher, which holds it too.
    * **Asked** subscriptions (``asked``, ``asked_bytes``), granted or refused:
      the forwarder's ``XPUB_MANUAL`` socket keeps every distinct prefix a
      connection sent until that connection goes, refused ones included, and
      nothing can make it forget one sooner. Past either bound (over every
      connection), the connection holding the most is cut
      (``refused["subscription_flood"]``); its memory is freed and given back to
      the operating system.

    Measured on libzmq 4.3.5 (docs/SECURITY.md, "Subscription memory"): about
    45 bytes per prefix byte for an asked subscription at the forwarder, 75 more
    for a granted one, and 45 at every publisher for a granted one; a prefix
    several connections hold is stored (and counted) once. With the defaults a
    forwarder's peak stays under 256 MB whatever members send (one connection or
    many), and each publisher holds at most about 35 MB of subscriptions.
    """

    per_connection: int = 10_000
    total: int = 100_000
    total_bytes: int = 768 * 1024  # the distinct granted prefixes' lengths, summed
    asked: int = 200_000
    asked_bytes: int = 1536 * 1024  # the distinct asked prefixes' lengths (granted or refused), summed

    def __post_init__(self) -> None:
        for name in ("per_connection", "total", "total_bytes", "asked", "asked_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"SubscriptionLimits.{name} must be positive")


@dataclass(frozen=True)
class Permissions:
    """What one key may do (compiled patterns)."""

    publish: tuple[Pattern, ...] = ()
    subscribe: tuple[Pattern, ...] = ()
    serve: tuple[Pattern, ...] = ()
    call: tuple[Pattern, ...] = ()


def _allows(patterns: tuple[Pattern, ...], topic: str) -> bool:
    return any(p.match(topic) for p in patterns)


class Policy:
    """A parsed policy (see the module docstring)."""

    def __init__(self, keys: Mapping[str, Permissions], source: str = "") -> None:
        self.keys = dict(keys)
        self.source = source

    @classmethod
    def from_dict(cls, data: Any, source: str = "policy") -> Policy:
        """Read a policy from its TOML table; raise :class:`SecurityError` naming what is wrong."""
        if not isinstance(data, dict) or not isinstance(data.get("keys", {}), dict):
            raise SecurityError(f"{source}: expected [keys.NAME] tables")
        unknown = set(data) - {"keys"}
        if unknown:
            raise SecurityError(f"{source}: unknown section(s) {sorted(unknown)} (only [keys.NAME])")
        keys: dict[str, Permissions] = {}
        for name, table in data.get("keys", {}).items():
            if not isinstance(table, dict):
                raise SecurityError(f"{source}: [keys.{name}] must be a table")
            wrong = set(table) - set(_ACTIONS)
            if wrong:
                raise SecurityError(
                    f"{source}: [keys.{name}] has unknown key(s) {sorted(wrong)} (allowed: {', '.join(_ACTIONS)})"
                )
            compiled: dict[str, tuple[Pattern, ...]] = {}
            for action in _ACTIONS:
                patterns = table.get(action, [])
                if not isinstance(patterns, list) or not all(isinstance(p, str) for p in patterns):
                    raise SecurityError(f"{source}: [keys.{name}] {action} must be a list of patterns")
                try:
                    compiled[action] = tuple(compile_pattern(p) for p in patterns)
                except TopicError as exc:
                    raise SecurityError(f"{source}: [keys.{name}] {action}: {exc}") from None
            keys[name] = Permissions(**compiled)
        return cls(keys, source)

    @property
    def restricts_publishing(self) -> bool:
        """False when every named key may publish everything (the forwarder then skips the check)."""
        return not all(any(p.text == "#" for p in perms.publish) for perms in self.keys.values())

    def may_publish(self, key: str, topic: str) -> bool:
        perms = self.keys.get(key)
        return perms is not None and (topic.startswith(RESERVED_PREFIX) or _allows(perms.publish, topic))

    def may_read(self, key: str, topic: str) -> bool:
        """Whether ``key`` may receive ``topic`` (its subscribe patterns): also what it may fetch from a
        publisher's history (PROTOCOL.md section 14)."""
        perms = self.keys.get(key)
        return perms is not None and (topic.startswith(RESERVED_PREFIX) or _allows(perms.subscribe, topic))

    def may_call(self, key: str, service: str) -> bool:
        perms = self.keys.get(key)
        return perms is not None and _allows(perms.call, service)

    def may_serve(self, key: str, service: str) -> bool:
        """Whether ``key`` may serve ``service``; every named key serves the bus's own control services
        (``_zmqbus.history``: a publisher's history, which answers by :meth:`may_read`)."""
        perms = self.keys.get(key)
        return perms is not None and (service.startswith(RESERVED_PREFIX) or _allows(perms.serve, service))

    def grant(self, key: str, prefix: bytes) -> list[bytes]:
        """The socket prefixes to apply for ``key``'s subscription to ``prefix`` (empty: denied)."""
        perms = self.keys.get(key)
        if perms is None:
            return []
        if prefix.startswith(_RESERVED):
            return [prefix]
        if prefix.startswith(TAIL_MARK):  # a tail pattern's (PROTOCOL.md section 2.3): every topic ending in W
            word = prefix[1:-1].decode(errors="replace")
            wide = any(p.text in ("#", f"#.{word}") for p in perms.subscribe)
            return [prefix] if wide else []
        out: list[bytes] = []
        for p in perms.subscribe:
            granted = _grant_one(p, prefix)
            if granted is None:
                continue
            if granted == [prefix]:
                return [prefix]  # granted as asked
            out.extend(g for g in granted if g not in out)
        return out


def _grant_one(p: Pattern, prefix: bytes) -> list[bytes] | None:
    """What pattern ``p`` grants of a subscription to ``prefix``: all of it, a narrowing, or None."""
    if p.text == "#":
        return [prefix]
    if p.prefix.endswith(b"\x00"):  # an exact topic
        return [prefix] if prefix == p.prefix else None
    literal = p.prefix  # b"L" for "L.#"
    if p.text.encode() != literal + b".#":
        return None  # only L.# and exact topics translate into prefixes
    if prefix.startswith(literal + b".") or prefix == literal + b"\x00":
        return [prefix]
    if prefix == literal:
        return [literal + b".", literal + b"\x00"]  # what "L.#" matches, exactly
    return None  # broader than allowed ("ord", "") or beside it ("orderly")


class OwnPolicy:
    """What a member's policy lets *it* do, checked before anything leaves it (PROTOCOL.md section 12):
    a publish, subscribe or serve outside it raises :class:`Forbidden` with the reason, where the
    forwarder or the responders would otherwise drop or refuse it in silence. Answers are cached
    per topic (a publish pays one dictionary lookup)."""

    def __init__(self, policy: Policy, key: str) -> None:
        self.policy, self.key = policy, key
        self._published: dict[str, bool] = {}

    def _refuse(self, what: str, name: str) -> Forbidden:
        named = self.key in self.policy.keys
        why = f"its policy ({self.policy.source}) " + ("does not allow it" if named else "does not name this key")
        return Forbidden(f"key {self.key!r} may not {what} {name!r}: {why}")

    def publish(self, topic: str) -> None:
        allowed = self._published.get(topic)
        if allowed is None:
            if len(self._published) > 10_000:
                self._published.clear()
            allowed = self._published[topic] = self.policy.may_publish(self.key, topic)
        if not allowed:
            raise self._refuse("publish on", topic)

    def subscribe(self, pattern: Pattern) -> None:
        prefix = pattern.prefix if pattern.tail is None else tail_prefix(pattern.tail)
        if not self.policy.grant(self.key, prefix):
            raise self._refuse("subscribe to", pattern.text)

    def serve(self, service: str) -> None:
        if not self.policy.may_serve(self.key, service):
            raise self._refuse("serve", service)
