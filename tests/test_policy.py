"""Per-key permissions, the pure part (zmqbus.core.policy): exact grants, deny by default."""

from __future__ import annotations

import pytest

from zmqbus import SecurityError
from zmqbus.core.policy import Policy

POLICY = Policy.from_dict(
    {
        "keys": {
            "orders": {
                "publish": ["order.#", "status.orders"],
                "subscribe": ["order.#", "payment.done"],
                "serve": ["orders.*"],
                "call": ["state.query", "payment.#"],
            },
            "admin": {"publish": ["#"], "subscribe": ["#"], "serve": ["#"], "call": ["#"]},
        }
    }
)


def test_publish_and_call_follow_the_patterns() -> None:
    assert POLICY.may_publish("orders", "order.start.request")
    assert POLICY.may_publish("orders", "status.orders")
    assert not POLICY.may_publish("orders", "payroll.run")
    assert POLICY.may_publish("orders", "_zmqbus.presence")  # control traffic: every named key
    assert not POLICY.may_publish("stranger", "order.start")  # a key the policy does not name: nothing
    assert POLICY.may_call("orders", "payment.charge") and not POLICY.may_call("orders", "errors.stats")
    assert POLICY.may_serve("orders", "orders.create") and not POLICY.may_serve("orders", "orders.a.b")
    assert POLICY.may_publish("admin", "anything.at.all")


def test_subscriptions_are_granted_exactly() -> None:
    grant = POLICY.grant
    assert grant("orders", b"order") == [b"order.", b"order\x00"]  # a zmqbus client's "order.#": narrowed
    assert grant("orders", b"order.start") == [b"order.start"]
    assert grant("orders", b"order\x00") == [b"order\x00"]
    assert grant("orders", b"payment.done\x00") == [b"payment.done\x00"]
    assert grant("orders", b"payment.done.x") == []
    assert grant("orders", b"orderly") == [] and grant("orders", b"ord") == [] and grant("orders", b"") == []
    assert grant("orders", b"_zmqbus.presence") == [b"_zmqbus.presence"]
    assert grant("stranger", b"order.") == []
    assert grant("admin", b"") == [b""]


def test_deny_by_default_and_who_restricts_publishing() -> None:
    assert Policy.from_dict({"keys": {"a": {}}}).restricts_publishing
    assert not Policy.from_dict({"keys": {"a": {"publish": ["#"]}}}).restricts_publishing
    assert POLICY.restricts_publishing


@pytest.mark.parametrize(
    "bad,why",
    [
        ({"keys": {"a": {"publish": "order.#"}}}, "must be a list"),
        ({"keys": {"a": {"publsh": ["x"]}}}, "unknown key"),
        ({"keys": {"a": {"publish": ["a..b"]}}}, "empty word"),
        ({"key": {}}, "unknown section"),
    ],
)
def test_a_bad_policy_is_one_clear_error(bad: dict[str, object], why: str) -> None:
    with pytest.raises(SecurityError, match=why):
        Policy.from_dict(bad, "policy.toml")
