"""CURVE security over real sockets: allowed members work; strangers, plaintext peers and revoked keys
get nothing and reach nothing; misconfiguration fails closed with one clear line."""

from __future__ import annotations

import asyncio
import os
import stat
import time
from pathlib import Path
from typing import Any

import msgpack
import pytest
import zmq

from zmqbus import (
    AuthenticationRefused,
    BusTimeout,
    Forwarder,
    InsecureEndpoint,
    KeyRing,
    MessageBroker,
    MessageMetadata,
    ProcessingMessage,
    SecurityError,
    ZmqbusError,
    keygen,
    load_keys,
)
from zmqbus.core.security import ZapDomain, check_endpoint, needs_keys, zap_decide
from zmqbus.io.sockets import get_context
from zmqbus.testing import wait_until


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    """A key folder: the forwarder's pair, two allowed members, one stranger (not allowed)."""
    folder = tmp_path / "keys"
    keygen(folder, "forwarder", allow=False)
    keygen(folder, "alice")
    keygen(folder, "bob")
    keygen(folder, "mallory", allow=False)
    return folder


@pytest.fixture
def secure_forwarder(keys: Path, tcp_pair: tuple[str, str]) -> Any:
    fwd = Forwarder(*tcp_pair, stats_interval=None, keys=load_keys(keys, "forwarder", server=False)).start()
    yield fwd
    fwd.stop()


def member(fwd: Forwarder, keys: Path, name: str, **kwargs: Any) -> MessageBroker:
    return MessageBroker(fwd.pub_endpoint, fwd.sub_endpoint, name=name, keys=load_keys(keys, name), **kwargs)


def rogue(*brokers: MessageBroker) -> None:
    """Members that skip the check of their own policy (a client in another language, an older zmqbus,
    an attacker): what they try must still be refused on the way, as the tests below check."""
    for b in brokers:
        b._own = None


# -- the pure part -----------------------------------------------------------------


@pytest.mark.parametrize(
    "endpoint,local",
    [
        ("tcp://127.0.0.1:5570", True),
        ("tcp://127.8.9.1:1", True),
        ("tcp://[::1]:5570", True),
        ("tcp://localhost:1", True),
        ("ipc:///tmp/x", True),
        ("inproc://x", True),
        ("bogus://x", True),
        ("tcp://0.0.0.0:5570", False),
        ("tcp://*:5570", False),
        ("tcp://10.0.0.5:1", False),
        ("tcp://eth0:1", False),
        ("tcp://bus.example.com:1", False),
        ("tcp://127.0.0.1;10.0.0.5:1", False),
        ("ws://127.0.0.1:1", False),
        ("epgm://eth0;239.1.1.1:5555", False),
    ],
)
def test_which_endpoints_need_keys(endpoint: str, local: bool) -> None:
    assert needs_keys(endpoint) is not local


def test_a_non_local_endpoint_without_keys_fails_closed_and_names_the_opt_out() -> None:
    with pytest.raises(InsecureEndpoint, match="--insecure"):
        check_endpoint("tcp://0.0.0.0:5570", None, False, "bind the forwarder at")
    check_endpoint("tcp://0.0.0.0:5570", None, True, "bind")  # explicitly insecure
    check_endpoint("tcp://127.0.0.1:5570", None, False, "bind")


def test_zap_decisions() -> None:
    key = b"k" * 32
    request = [b"1.0", b"id-1", b"dom", b"10.0.0.1", b"", b"CURVE", key]
    curve = ZapDomain({key: "alice"})
    ok = zap_decide(request, curve)
    assert ok.denied is None and ok.reply == [b"1.0", b"id-1", b"200", b"OK", b"alice", b""]
    assert zap_decide(request, ZapDomain({b"x" * 32: "bob"})).denied == "unknown_key"
    assert zap_decide(request, None).denied == "unknown_domain"
    null = [b"1.0", b"id", b"dom", b"a", b"", b"NULL"]
    assert zap_decide(null, curve).denied == "mechanism"  # a plaintext client on a CURVE server
    assert zap_decide(null, ZapDomain(None)).denied is None  # a plaintext server admits it
    assert zap_decide(request, ZapDomain(None)).denied == "mechanism"
    limited = zap_decide(request, curve, admit="connection_limit")
    assert limited.denied == "connection_limit" and limited.reply[2] == b"400"
    assert zap_decide(request, ZapDomain({}), admit="connection_limit").denied == "unknown_key"  # who first
    assert zap_decide([b"2.0", *request[1:]], curve).reply[2] == b"400"
    assert zap_decide([b"1.0"], curve).reply == []  # nothing to answer to


def test_a_keyring_refuses_malformed_keys() -> None:
    with pytest.raises(SecurityError, match="40-character"):
        KeyRing("x", b"short", b"s" * 40)


# -- key files ---------------------------------------------------------------------


def test_keygen_writes_an_owner_only_secret_and_fills_the_allow_list(tmp_path: Path) -> None:
    folder = tmp_path / "k"
    public, secret = keygen(folder, "alice")
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert (folder / "allowed" / "alice.key").read_bytes() == public.read_bytes()
    assert zmq.auth.load_certificate(str(secret))[1] is not None  # pyzmq's own format
    with pytest.raises(SecurityError, match="already exists"):
        keygen(folder, "alice")
    keygen(folder, "alice", force=True)


def test_bad_key_files_are_one_line_errors(keys: Path) -> None:
    with pytest.raises(SecurityError, match=r"not found .*zmqbus keygen carol"):
        load_keys(keys, "carol")
    os.chmod(keys / "alice.key_secret", 0o644)
    with pytest.raises(SecurityError, match="readable by others"):
        load_keys(keys, "alice")
    os.chmod(keys / "alice.key_secret", 0o600)
    (keys / "allowed" / "broken.key").write_text('public-key = "not-a-key"\n')
    with pytest.raises(SecurityError, match="malformed"):
        load_keys(keys, "alice")


def test_keys_come_from_the_environment(keys: Path, monkeypatch: pytest.MonkeyPatch, tcp_pair: tuple[str, str]) -> None:
    monkeypatch.setenv("ZMQBUS_KEYS", str(keys))
    monkeypatch.setenv("ZMQBUS_KEY_NAME", "bob")
    b = MessageBroker(*tcp_pair)
    assert b.keys is not None and b.keys.name == "bob" and b.keys.server == load_keys(keys, "bob").server
    f = Forwarder(*tcp_pair)
    assert f.keys is not None and f.keys.name == "forwarder" and set(f.keys.allowed.values()) == {"alice", "bob"}


# -- over real sockets ---------------------------------------------------------------


async def test_allowed_members_publish_subscribe_and_call(secure_forwarder: Forwarder, keys: Path) -> None:
    got: list[Any] = []
    async with member(secure_forwarder, keys, "alice") as alice, member(secure_forwarder, keys, "bob") as bob:
        bob.subscribe("bob", "pay.#", lambda m: got.append(m.content))
        bob.serve("bob.echo", lambda m: m.content)
        await bob.ready(5)
        await alice.publish(ProcessingMessage("pay.run", {"salary": 1}))
        await wait_until(lambda: got == [{"salary": 1}], 5, "the message between allowed members")
        reply = await alice.request("bob.echo", ProcessingMessage("q", 42), timeout=5)
        assert reply.content == 42
    assert secure_forwarder.statistics().refused == {}


async def test_a_stranger_is_refused_at_once_and_reaches_nothing(secure_forwarder: Forwarder, keys: Path) -> None:
    got: list[Any] = []
    async with member(secure_forwarder, keys, "bob") as bob:
        bob.subscribe("bob", "pay.#", lambda m: got.append(m.content))
        await bob.ready(5)
        mallory = member(secure_forwarder, keys, "mallory")
        t0 = time.monotonic()
        with pytest.raises(AuthenticationRefused, match=r"refused this key.*mallory"):
            await mallory.publish(ProcessingMessage("pay.run", "forged"))
        assert time.monotonic() - t0 < 3
        await mallory.close(0)
        # plaintext pyzmq peers: a PUB's message and a SUB's subscription go nowhere
        ctx = get_context()
        pub, sub = ctx.socket(zmq.PUB), ctx.socket(zmq.SUB)
        try:
            for s in (pub, sub):
                s.setsockopt(zmq.LINGER, 0)
            sub.subscribe(b"")
            pub.connect(secure_forwarder.pub_endpoint)
            sub.connect(secure_forwarder.sub_endpoint)
            for _ in range(20):
                pub.send(b"pay.run\x00" + msgpack.packb([2, "pay.run"]))
                await asyncio.sleep(0.01)
            await bob.publish(ProcessingMessage("pay.run", "genuine"))
            await wait_until(lambda: got == ["genuine"], 5, "the genuine message")
            assert not sub.poll(200)  # the plaintext SUB read nothing
        finally:
            pub.close(0)
            sub.close(0)
    stats = secure_forwarder.statistics()
    assert stats.refused.get("unknown_key", 0) >= 1 and stats.handshake_failures >= 1
    await wait_until(  # the plaintext peers, counted by reason too (issue 22, item 5)
        lambda: secure_forwarder.statistics().refused.get("no_key", 0) >= 1, 5, "no_key counted"
    )


async def test_the_wrong_server_key_is_a_clear_error(secure_forwarder: Forwarder, keys: Path) -> None:
    alice = load_keys(keys, "alice")
    wrong = KeyRing("alice", alice.public, alice.secret, server=load_keys(keys, "bob").public, allowed=alice.allowed)
    b = MessageBroker(secure_forwarder.pub_endpoint, secure_forwarder.sub_endpoint, keys=wrong)
    try:
        with pytest.raises(AuthenticationRefused, match="handshake failed"):
            await b.ready(5)
    finally:
        await b.close(0)


async def test_a_revoked_key_is_refused_after_a_reload(secure_forwarder: Forwarder, keys: Path) -> None:
    (keys / "allowed" / "bob.key").unlink()
    added, removed = secure_forwarder.reload_keys()
    assert (added, removed) == ([], ["bob"])
    bob = member(secure_forwarder, keys, "bob")
    try:
        with pytest.raises(AuthenticationRefused):
            await bob.ready(5)
    finally:
        await bob.close(0)
    async with member(secure_forwarder, keys, "alice") as alice:
        await alice.ready(5)  # the others are unaffected


async def test_forged_presence_is_dropped_at_the_forwarder_and_ignored_by_callers(
    secure_forwarder: Forwarder, keys: Path
) -> None:
    """Issue 22, item 2: an announcement counts only with the key of the member that sends it. A member
    announcing another member's public key (copied from that member's presence), a stranger's key, or
    none, is dropped by the forwarder (``presence_forged``); a forwarder that does not check (an older
    zmqbus) still leaves the callers' own check, which ignores keys they do not allow."""
    async with member(secure_forwarder, keys, "alice") as alice, member(secure_forwarder, keys, "bob") as bob:
        bob.serve("svc.work", lambda m: "from bob")
        await alice.ready(5)
        assert (await alice.request("svc.work", ProcessingMessage("q", 1), timeout=5)).content == "from bob"
        copied = load_keys(keys, "alice").public.decode()  # an allowed key: callers would accept it
        stranger = load_keys(keys, "mallory").public.decode()

        def forged(key: str | None) -> dict[str, Any]:
            out: dict[str, Any] = {
                "instance": f"forged-{key}",
                "endpoint": "tcp://127.0.0.1:9",
                "services": ["svc.work"],
                "interval": 1.0,
                "liveness": 3,
                "load": 0,
                "leaving": False,
            }
            if key is not None:
                out["key"] = key
            return out

        for key in (copied, stranger, None):
            await bob.publish(ProcessingMessage("_zmqbus.presence", forged(key)))
        await wait_until(
            lambda: secure_forwarder.statistics().refused.get("presence_forged", 0) >= 3, 5, "the forgeries dropped"
        )
        assert alice.live_instances("svc.work") == [bob.client_id]
        for _ in range(5):
            assert (await alice.request("svc.work", ProcessingMessage("q", 1), timeout=2)).content == "from bob"
        assert secure_forwarder.policy_guard is not None
        secure_forwarder.policy_guard.checks_control = False  # a forwarder that does not check
        for key in (stranger, None):
            await bob.publish(ProcessingMessage("_zmqbus.presence", forged(key)))
        await wait_until(
            lambda: alice._requests.caller is not None and alice._requests.caller.presence_refused >= 2,
            5,
            "the callers' own check",
        )
        for _ in range(5):
            assert (await alice.request("svc.work", ProcessingMessage("q", 1), timeout=2)).content == "from bob"


async def test_non_local_endpoints_without_keys_fail_closed() -> None:
    with pytest.raises(InsecureEndpoint, match="--insecure"):
        Forwarder("tcp://0.0.0.0:1", "tcp://127.0.0.1:2", stats_interval=None).start()
    b = MessageBroker("tcp://192.0.2.1:1", "tcp://192.0.2.1:2")
    with pytest.raises(InsecureEndpoint):
        await b.start()
    await b.close(0)
    server = MessageBroker("tcp://127.0.0.1:1", "tcp://127.0.0.1:2", rpc_bind="tcp://0.0.0.0:*")
    server.serve("x.y", lambda m: None)
    with pytest.raises(InsecureEndpoint):
        await server.start()  # binds its responder
    await server.close(0)


# -- limits ------------------------------------------------------------------------------


@pytest.mark.parametrize("secure", [False, True], ids=["clear", "curve"])
async def test_the_connection_limit_refuses_new_clients_and_frees_up(
    tcp_pair: tuple[str, str], keys: Path, secure: bool
) -> None:
    fkeys = load_keys(keys, "forwarder", server=False) if secure else None
    mkeys = load_keys(keys, "alice") if secure else None
    with Forwarder(*tcp_pair, stats_interval=None, keys=fkeys, max_connections=2) as fwd:
        first = MessageBroker(*tcp_pair, keys=mkeys)  # its two connections fill the limit
        await first.ready(5)
        second = MessageBroker(*tcp_pair, keys=mkeys)
        try:
            if secure:
                with pytest.raises(AuthenticationRefused, match="connection limit"):
                    await second.ready(5)
            else:
                with pytest.raises(BusTimeout, match="connection limit"):
                    await second.ready(1)
        finally:
            await second.close(0)
        assert fwd.statistics().refused.get("connection_limit", 0) >= 1
        await first.close()
        await wait_until(
            lambda: (
                fwd.statistics().publisher_connects == fwd.statistics().publisher_disconnects
                and fwd.statistics().subscriber_connects == fwd.statistics().subscriber_disconnects
            ),
            10,
            "every connection to be counted closed",
        )
        third = MessageBroker(*tcp_pair, keys=mkeys)  # room again
        await third.ready(10)
        await third.close()


def test_idle_connections_are_dropped_after_the_handshake_interval(tcp_pair: tuple[str, str]) -> None:
    """TCP connections that never speak ZMTP (a stranger holding file descriptors) are closed by the
    forwarder after handshake_ivl, so they cannot lock legitimate clients out."""
    import socket

    from zmqbus.io.transport import SocketConfig

    host, port = tcp_pair[0].rsplit("/", 1)[1].split(":")
    with Forwarder(*tcp_pair, stats_interval=None, socket_config=SocketConfig(handshake_ivl=0.5)):
        idle = [socket.create_connection((host, int(port)), timeout=5) for _ in range(20)]
        try:
            t0 = time.monotonic()
            for s in idle:
                s.settimeout(5)
                data = s.recv(64)  # the greeting, if any, then EOF when the forwarder drops us
                while data:
                    data = s.recv(64)
            assert time.monotonic() - t0 < 4
        finally:
            for s in idle:
                s.close()


# -- per-key permissions ---------------------------------------------------------------------

POLICY_TOML = """
[keys.alice]
publish = ["order.#"]
subscribe = ["order.#"]
call = ["order.#"]
serve = ["order.#"]

[keys.bob]
publish = ["payroll.#", "order.#"]
subscribe = ["#"]
serve = ["payroll.#"]
call = ["#"]
"""


@pytest.fixture
def policed(keys: Path, tcp_pair: tuple[str, str], tmp_path: Path) -> Any:
    from zmqbus import load_policy

    (tmp_path / "policy.toml").write_text(POLICY_TOML)
    policy = load_policy(tmp_path / "policy.toml")
    fwd = Forwarder(
        *tcp_pair, stats_interval=None, keys=load_keys(keys, "forwarder", server=False), policy=policy
    ).start()
    yield fwd, policy
    fwd.stop()


async def test_the_forwarder_enforces_publish_and_subscribe_permissions(policed: Any, keys: Path) -> None:
    fwd, policy = policed
    to_alice: list[str] = []
    to_bob: list[str] = []
    async with member(fwd, keys, "alice", policy=policy) as alice, member(fwd, keys, "bob", policy=policy) as bob:
        rogue(alice, bob)  # they skip their own policy: the forwarder and responders still refuse
        alice.subscribe("alice", "order.#", lambda m: to_alice.append(m.topic or ""))
        alice.subscribe("alice", "payroll.#", lambda m: to_alice.append(m.topic or ""))  # not allowed
        bob.subscribe("bob", "#", lambda m: to_bob.append(m.topic or ""))
        await alice.ready(5)
        await bob.ready(5)
        # Again: a publisher sends only what someone subscribed to, so alice's socket must have learnt
        # bob's subscriptions (forwarded after bob's ready) for her forged message to reach the forwarder.
        await alice.ready(5)
        await alice.publish(ProcessingMessage("payroll.run", "forged"))  # not allowed: dropped
        await alice.publish(ProcessingMessage("order.start", 1))
        await bob.publish(ProcessingMessage("payroll.run", "salaries"))
        await bob.publish(ProcessingMessage("orderly.x", "not order.#"))  # also not allowed for bob
        await bob.publish(ProcessingMessage("order.done", 2))
        await wait_until(lambda: "order.done" in to_alice and "order.done" in to_bob, 5, "the allowed messages")
        await bob.ready(5)  # a probe behind everything bob sent
        # (two publishers: no order between them)
        assert sorted(to_alice) == ["order.done", "order.start"]  # never payroll: the subscription was refused
        assert sorted(to_bob) == ["order.done", "order.start", "payroll.run"]  # never alice's forged payroll
        assert alice.statistics().unmatched == 0  # "order.#" was narrowed: nothing else reached the socket
    refused = fwd.statistics().refused
    assert refused["publish_denied"] >= 2 and refused["subscribe_denied"] >= 1


TAIL_POLICY_TOML = """
[keys.alice]
publish = ["order.#"]
subscribe = ["order.#"]

[keys.bob]
publish = ["order.#"]
subscribe = ["#.error"]
"""


async def test_tail_routing_under_a_policy(keys: Path, tcp_pair: tuple[str, str], tmp_path: Path) -> None:
    # PROTOCOL.md 2.3 under section 12's rules: a tail subscription is granted by '#.word' (bob) and refused
    # to a key that may read only 'order.#' (alice); a tail copy passes the publish rules of the topic inside
    # it, so alice's forbidden payroll.error reaches nobody.
    from zmqbus import load_policy

    (tmp_path / "tail-policy.toml").write_text(TAIL_POLICY_TOML)
    policy = load_policy(tmp_path / "tail-policy.toml")
    fwd = Forwarder(*tcp_pair, stats_interval=None, keys=load_keys(keys, "forwarder", server=False), policy=policy)
    fwd.start()
    try:
        to_alice: list[str] = []
        to_bob: list[str] = []
        async with member(fwd, keys, "alice", policy=policy) as alice, member(fwd, keys, "bob", policy=policy) as bob:
            rogue(alice, bob)  # they skip their own policy: the forwarder still refuses
            alice.subscribe("alice", "#.error", lambda m: to_alice.append(m.topic or ""))  # refused: order.# only
            bob.subscribe("bob", "#.error", lambda m: to_bob.append(m.topic or ""))
            await alice.ready(5)
            await bob.ready(5)
            await wait_until(lambda: alice.statistics().tails["words"] == 1, 5, "alice sees bob's tail")
            await alice.publish(ProcessingMessage("payroll.error", "forged"))  # alice may not publish payroll
            await alice.publish(ProcessingMessage("order.created", 1))
            await alice.publish(ProcessingMessage("order.error", 2))
            await wait_until(lambda: "order.error" in to_bob, 5, "the tail copy")
            await alice.ready(5)  # a probe behind everything alice sent
            assert to_bob == ["order.error"] and to_alice == []
            assert bob.statistics().unmatched == 0  # only its tail reached it, not the bus
        refused = fwd.statistics().refused
        # payroll.error's tail copy, refused by the topic inside it (its ordinary frame never left alice: no
        # one subscribes a prefix of it)
        assert refused["publish_denied"] >= 1
        assert refused["subscribe_denied"] >= 1  # alice's tail prefix
    finally:
        fwd.stop()


async def test_recovery_does_not_carry_what_the_forwarder_refused(policed: Any, keys: Path) -> None:
    # alice's forged payroll.run is dropped by the forwarder, but her history keeps it and her presence
    # names the stream: bob (who may read '#') must not fetch it peer to peer, and alice must not serve it.
    from zmqbus import RemoteError
    from zmqbus.core.control import HISTORY_SERVICE, HistoryQuery

    fwd, policy = policed
    to_bob: list[str] = []
    async with member(fwd, keys, "alice", policy=policy) as alice, member(fwd, keys, "bob", policy=policy) as bob:
        rogue(alice, bob)  # they skip their own policy: the forwarder and responders still refuse
        bob.subscribe("bob", "#", lambda m: to_bob.append(f"{m.metadata.source_component}:{m.topic}"))
        await bob.ready(5)
        await alice.ready(5)
        await alice.publish(ProcessingMessage("payroll.run", "forged", MessageMetadata(source_component="alice")))
        await alice.publish(ProcessingMessage("order.start", 1, MessageMetadata(source_component="alice")))
        # alice's presence (every second) names both streams; bob refuses to fetch the one she may not publish
        await wait_until(lambda: bob.statistics().recovery.get("streams_refused", 0) >= 1, 5, "presence seen")
        await wait_until(lambda: "alice:order.start" in to_bob, 5, "the allowed message")
        with pytest.raises(RemoteError):  # asked directly, alice's history refuses it too
            await bob.request(
                HISTORY_SERVICE, ProcessingMessage(HISTORY_SERVICE, HistoryQuery(topic="payroll.run").to_content())
            )
        assert "alice:payroll.run" not in to_bob
        assert alice.statistics().recovery["refused"] >= 1


async def test_responders_enforce_call_permissions_and_callers_serve_permissions(policed: Any, keys: Path) -> None:
    from zmqbus import RemoteError

    fwd, policy = policed
    async with member(fwd, keys, "alice", policy=policy) as alice, member(fwd, keys, "bob", policy=policy) as bob:
        rogue(alice, bob)  # they skip their own policy: the forwarder and responders still refuse
        bob.serve("payroll.compute", lambda m: "secret")
        alice.serve("payroll.steal", lambda m: "hijacked")  # alice may not serve payroll.*
        await alice.ready(5)
        await bob.ready(5)
        with pytest.raises(RemoteError) as info:
            await alice.request("payroll.compute", ProcessingMessage("q", 1), timeout=5)
        assert info.value.code == "forbidden"
        assert (await bob.request("payroll.compute", ProcessingMessage("q", 1), timeout=5)).content == "secret"
        from zmqbus import NoResponder

        with pytest.raises(NoResponder):
            await bob.request("payroll.steal", ProcessingMessage("q", 1), timeout=2)
        refused = fwd.statistics().refused.get("presence_forged", 0)  # dropped at the forwarder now
        assert refused >= 1 or (bob._requests.caller is not None and bob._requests.caller.presence_refused >= 1)
        assert bob.statistics().rpc["served_forbidden"] == 1


def test_subscription_limits_bite_and_are_counted(tcp_pair: tuple[str, str]) -> None:
    """SubscriptionLimits(per_connection=3): a raw SUB subscribing 6 topics gets 3 of them."""
    from zmqbus.core.policy import SubscriptionLimits

    with Forwarder(*tcp_pair, stats_interval=None, subscription_limits=SubscriptionLimits(per_connection=3)) as fwd:
        ctx = get_context()
        pub, sub = ctx.socket(zmq.PUB), ctx.socket(zmq.SUB)
        try:
            for s in (pub, sub):
                s.setsockopt(zmq.LINGER, 0)
            sub.connect(fwd.sub_endpoint)
            for i in range(6):
                sub.subscribe(f"t{i}\x00".encode())
            pub.connect(fwd.pub_endpoint)
            seen: set[bytes] = set()
            deadline = time.monotonic() + 10
            while len(seen) < 3 and time.monotonic() < deadline:
                for i in range(6):
                    pub.send(f"t{i}\x00x".encode())
                while sub.poll(20):
                    seen.add(sub.recv().split(b"\x00")[0])
            for _ in range(3):  # the rest never come
                for i in range(6):
                    pub.send(f"t{i}\x00x".encode())
                while sub.poll(50):
                    seen.add(sub.recv().split(b"\x00")[0])
            assert seen == {b"t0", b"t1", b"t2"}
            assert fwd.statistics().refused["subscription_limit"] == 3
        finally:
            pub.close(0)
            sub.close(0)


async def test_revoking_a_key_cuts_its_live_connections(secure_forwarder: Forwarder, keys: Path) -> None:
    """bob is connected and receiving; his key is removed and the allow-list reloaded: every live
    connection is cut, bob's reconnection is refused (he receives nothing more, and his next ready()
    says why), alice reconnects and goes on."""
    to_bob: list[Any] = []
    to_alice: list[Any] = []
    async with member(secure_forwarder, keys, "alice") as alice, member(secure_forwarder, keys, "bob") as bob:
        bob.subscribe("bob", "news.#", lambda m: to_bob.append(m.content))
        alice.subscribe("alice", "news.#", lambda m: to_alice.append(m.content))
        await bob.ready(5)
        await alice.publish(ProcessingMessage("news.a", 1))
        await wait_until(lambda: to_bob == [1] and to_alice == [1], 5, "the first message to both")
        (keys / "allowed" / "bob.key").unlink()
        assert secure_forwarder.reload_keys() == ([], ["bob"])
        with pytest.raises(AuthenticationRefused):
            await bob.ready(5)
        await alice.ready(10)  # reconnected, handshake accepted again
        await alice.publish(ProcessingMessage("news.a", 2))
        await wait_until(lambda: to_alice[-1] == 2, 5, "alice's next message after the cut")
        await alice.ready(5)
        assert to_bob == [1]


@pytest.mark.slow
async def test_strangers_cannot_call_a_secure_responder(secure_forwarder: Forwarder, keys: Path) -> None:
    """A raw DEALER at a responder's endpoint, with no key or an unknown one, gets no answer; an
    allowed member's raw DEALER (with the responder's key from its presence) does."""
    from zmqbus.core.codec import Codec, request_head
    from zmqbus.io.security import apply_client

    async with member(secure_forwarder, keys, "bob") as bob:
        bob.serve("state.query", lambda m: {"secret": True})
        await bob.ready(5)
        assert bob._requests.responder is not None
        endpoint, server_key = bob._requests.responder.endpoint, load_keys(keys, "bob").public
        codec = Codec()
        msg = ProcessingMessage("state.query", {})
        head = request_head("state.query")
        frame = head + codec.encode(msg, head, "stranger", 0)
        answers = {}
        for who in (None, "mallory", "alice"):
            dealer = get_context().socket(zmq.DEALER)
            dealer.setsockopt(zmq.LINGER, 0)
            dealer.setsockopt(zmq.SNDTIMEO, 2000)  # a refused peer may have no pipe to queue in: never block
            if who is not None:
                apply_client(dealer, load_keys(keys, who), server_key)
            dealer.connect(endpoint)
            try:
                try:
                    dealer.send(frame)
                except zmq.Again:
                    answers[who] = 0  # could not even be sent: no answer
                    continue
                answers[who] = await asyncio.to_thread(dealer.poll, 1500)
            finally:
                dealer.close(0)
        assert answers == {None: 0, "mallory": 0, "alice": zmq.POLLIN}


async def test_a_responder_reloads_its_allow_list(secure_forwarder: Forwarder, keys: Path) -> None:
    """mallory's raw DEALER gets no answer from bob's responder until mallory's key is allowed and
    bob reloads (what `zmqbus run` does on SIGHUP)."""
    import shutil

    from zmqbus.core.codec import Codec, request_head
    from zmqbus.io.security import apply_client

    async with member(secure_forwarder, keys, "bob") as bob:
        bob.serve("state.query", lambda m: "ok")
        await bob.ready(5)
        assert bob._requests.responder is not None
        endpoint, server_key = bob._requests.responder.endpoint, load_keys(keys, "bob").public
        head = request_head("state.query")
        frame = head + Codec().encode(ProcessingMessage("state.query", {}), head, "m", 0)

        async def ask() -> int:
            dealer = get_context().socket(zmq.DEALER)
            dealer.setsockopt(zmq.LINGER, 0)
            dealer.setsockopt(zmq.SNDTIMEO, 2000)  # a refused peer may have no pipe to queue in: never block
            apply_client(dealer, load_keys(keys, "mallory"), server_key)
            dealer.connect(endpoint)
            try:
                try:
                    dealer.send(frame)
                except zmq.Again:
                    return 0
                return int(await asyncio.to_thread(dealer.poll, 1500))
            finally:
                dealer.close(0)

        assert await ask() == 0
        shutil.copyfile(keys / "mallory.key", keys / "allowed" / "mallory.key")
        assert bob.reload_keys() == (["mallory"], [])
        assert await ask() == zmq.POLLIN


def test_an_exposed_forwarder_limits_subscriptions_by_default(keys: Path, tcp_pair: tuple[str, str]) -> None:
    """With keys the guarded proxy and its limits are on by default; on a plaintext (local) bus the
    C proxy runs unless limits are asked for."""
    from zmqbus import SubscriptionLimits

    assert Forwarder(*tcp_pair, keys=load_keys(keys, "forwarder", server=False)).policy_guard is not None
    assert Forwarder(*tcp_pair).policy_guard is None
    assert Forwarder(*tcp_pair, subscription_limits=True).policy_guard is not None
    assert (
        Forwarder(*tcp_pair, keys=load_keys(keys, "forwarder", server=False), subscription_limits=False).policy_guard
        is None
    )
    limited = Forwarder(*tcp_pair, subscription_limits=SubscriptionLimits(total=7))
    assert limited.policy_guard is not None and limited.policy_guard.limits.total == 7


def test_the_subscription_bytes_limit_bites(tcp_pair: tuple[str, str]) -> None:
    """Long prefixes are what costs memory (about 120 bytes per granted prefix byte): a byte budget of
    1,000 grants five 200-byte subscriptions of ten."""
    from zmqbus import SubscriptionLimits

    with Forwarder(*tcp_pair, stats_interval=None, subscription_limits=SubscriptionLimits(total_bytes=1000)) as fwd:
        sub = get_context().socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        try:
            sub.connect(fwd.sub_endpoint)
            for i in range(10):
                sub.subscribe(f"{i}".encode() + b"x" * 199)
            deadline = time.monotonic() + 10
            while fwd.statistics().subscription_frames < 10 and time.monotonic() < deadline:
                time.sleep(0.02)
            assert fwd.statistics().refused.get("subscription_limit") == 5
        finally:
            sub.close(0)


async def test_a_reloaded_policy_that_starts_restricting_publishing_is_enforced(
    keys: Path, tcp_pair: tuple[str, str], tmp_path: Path
) -> None:
    """The guarded proxy reads whether to check publications per batch: a policy that allowed every
    topic and, after a reload, restricts alice to order.# drops her payroll message from then on."""
    from zmqbus import load_policy

    path = tmp_path / "policy.toml"
    path.write_text(
        '[keys.alice]\npublish = ["#"]\nsubscribe = ["#"]\n[keys.bob]\npublish = ["#"]\nsubscribe = ["#"]\n'
    )
    got: list[Any] = []
    with Forwarder(
        *tcp_pair, stats_interval=None, keys=load_keys(keys, "forwarder", server=False), policy=load_policy(path)
    ) as fwd:
        assert fwd.policy_guard is not None and fwd.policy_guard.checks_publish  # always under a policy
        async with member(fwd, keys, "alice") as alice, member(fwd, keys, "bob") as bob:
            bob.subscribe("bob", "#", lambda m: got.append(m.content))
            await bob.ready(5)
            await alice.ready(5)
            await alice.publish(ProcessingMessage("payroll.run", 1))
            await wait_until(lambda: got == [1], 5, "the first payroll message (allowed)")
            path.write_text(
                '[keys.alice]\npublish = ["order.#"]\nsubscribe = ["#"]\n'
                '[keys.bob]\npublish = ["#"]\nsubscribe = ["#"]\n'
            )
            fwd.reload_keys()
            await alice.publish(ProcessingMessage("payroll.run", 2))  # denied now
            await alice.publish(ProcessingMessage("order.x", 3))
            await wait_until(lambda: got[-1] == 3, 5, "alice's allowed message after the reload")
            assert got == [1, 3]
        assert fwd.statistics().refused["publish_denied"] == 1


async def test_a_publishers_history_serves_only_topics_the_callers_key_may_read(policed: Any, keys: Path) -> None:
    """Recovery's fetches go peer to peer to the publisher, over CURVE, and obey the policy: alice (who may
    subscribe to order.# only) gets bob's order history and is refused his payroll history."""
    from zmqbus import RemoteError
    from zmqbus.core.control import HISTORY_SERVICE

    fwd, policy = policed
    async with member(fwd, keys, "alice", policy=policy) as alice, member(fwd, keys, "bob", policy=policy) as bob:
        rogue(alice, bob)  # they skip their own policy: the forwarder and responders still refuse
        await bob.publish(ProcessingMessage("order.done", 1))
        await bob.publish(ProcessingMessage("payroll.run", "salaries"))
        await alice.wait_for_service(HISTORY_SERVICE, instance_id=bob.client_id, timeout=10)
        got = await alice.request(
            HISTORY_SERVICE, ProcessingMessage(HISTORY_SERVICE, {"topic": "order.done", "first": 1})
        )
        assert len(got.content["frames"]) == 1
        with pytest.raises(RemoteError) as refused:
            await alice.request(
                HISTORY_SERVICE, ProcessingMessage(HISTORY_SERVICE, {"topic": "payroll.run", "first": 1})
            )
        assert refused.value.error_type == "PermissionError"
        assert bob.statistics().recovery["refused"] == 1 and bob.statistics().recovery["served"] == 1


async def test_a_member_refuses_what_its_own_policy_does_not_allow(policed: Any, keys: Path) -> None:
    """Refused at once, with the reason, instead of accepted and dropped in silence at the forwarder."""
    import asyncio

    from zmqbus import Forbidden

    fwd, policy = policed
    async with member(fwd, keys, "alice", policy=policy) as alice:
        publishing = alice.publish(ProcessingMessage("payroll.run", "forged"))  # raises when awaited, not before
        with pytest.raises(
            Forbidden, match=r"key 'alice' may not publish on 'payroll.run': its policy \(.*\) does not"
        ):
            await publishing
        with pytest.raises(Forbidden):  # in a task too
            await asyncio.create_task(alice.publish(ProcessingMessage("payroll.run", "forged")))
        with pytest.raises(Forbidden, match=r"may not subscribe to 'payroll\.#'"):
            alice.subscribe("alice", "payroll.#", lambda m: None)
        with pytest.raises(Forbidden, match=r"may not subscribe to '#\.error'"):
            alice.subscribe("alice", "#.error", lambda m: None)
        with pytest.raises(Forbidden, match=r"may not serve 'payroll\.steal'"):
            alice.serve("payroll.steal", lambda m: "hijacked")
        alice.subscribe("alice", "order.#", lambda m: None)  # allowed: nothing raised
        await alice.publish(ProcessingMessage("order.start", 1))
        assert alice.subscriptions() == [("alice", "order.#")]
    assert fwd.statistics().refused.get("publish_denied", 0) == 0  # nothing forbidden left alice


async def test_zmqbus_stats_answers_on_a_policed_bus_and_members_cannot_forge_it(
    policed: Any, keys: Path, tmp_path: Path
) -> None:
    """Issue 22, item 4: the forwarder's own statistics pass its policy; a member's forged ones do not."""
    import asyncio
    import json
    import subprocess
    import sys

    fwd, policy = policed
    seen: list[Any] = []
    async with member(fwd, keys, "alice", policy=policy) as alice, member(fwd, keys, "bob", policy=policy) as bob:
        rogue(bob)
        alice.subscribe("alice", "_zmqbus.forwarder.stats", lambda m: seen.append(m.content))
        await alice.ready(5)
        await bob.ready(5)  # after alice's subscription: bob's socket sends the topic on
        for _ in range(3):
            await bob.publish(ProcessingMessage("_zmqbus.forwarder.stats", {"frames_in": 424242}))
        await bob.ready(5)  # behind the forgeries: they reached the forwarder
        await alice.publish(ProcessingMessage("_zmqbus.forwarder.query", {}))  # the real ones, asked for
        await wait_until(lambda: len(seen) >= 1, 5, "the forwarder's own statistics")
        assert all(s.get("frames_in") != 424242 for s in seen)
    policy_file = tmp_path / "policy.toml"
    done = await asyncio.to_thread(
        subprocess.run,
        [
            sys.executable, "-m", "zmqbus.cli", "--keys", str(keys), "--key-name", "alice", "--policy",
            str(policy_file), "stats", "--json", "--pub", fwd.pub_endpoint, "--sub", fwd.sub_endpoint,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["frames_in"] != 424242 and report["uptime"] > 0
    assert fwd.statistics().refused["publish_denied"] >= 3  # the forgeries, dropped


@pytest.mark.timeout(90)
async def test_a_refused_member_comes_back_by_itself_and_publishes_nothing_meanwhile(
    secure_forwarder: Forwarder, keys: Path
) -> None:
    """Issue 22, item 6: libzmq never reconnects a session whose handshake was refused; the member does,
    with backoff. Revoked: publish() raises AuthenticationRefused. Allowed again: it is back, without
    a restart, and nothing is delivered twice."""
    saved = (keys / "allowed" / "bob.key").read_bytes()
    to_alice: list[Any] = []
    async with member(secure_forwarder, keys, "alice") as alice, member(secure_forwarder, keys, "bob") as bob:
        alice.subscribe("alice", "news.#", lambda m: to_alice.append(m.content))
        await alice.ready(5)
        await bob.ready(5)  # bob's socket knows alice's subscription
        await bob.publish(ProcessingMessage("news.a", 1))
        await wait_until(lambda: to_alice == [1], 5, "bob's first message")
        (keys / "allowed" / "bob.key").unlink()
        assert secure_forwarder.reload_keys() == ([], ["bob"])
        refused: list[BaseException] = []
        queued = [0]  # accepted before the refusal was known: queued, and sent once bob is back

        async def try_publish() -> bool:
            try:
                await bob.publish(ProcessingMessage("news.a", "while revoked"), timeout=0.5)
                queued[0] += 1
            except AuthenticationRefused as exc:
                refused.append(exc)
                return True
            except ZmqbusError:  # a BusTimeout while the cut is being noticed
                pass
            return False

        deadline = asyncio.get_running_loop().time() + 15
        while not await try_publish():
            assert asyncio.get_running_loop().time() < deadline, "publish never said the key was refused"
            await asyncio.sleep(0.1)
        assert "refused this key" in str(refused[0])
        (keys / "allowed" / "bob.key").write_bytes(saved)
        assert secure_forwarder.reload_keys() == (["bob"], [])
        await wait_until(lambda: all(w.refusal is None for w in bob._watches), 40, "bob accepted again")
        await bob.ready(10)
        await alice.ready(5)
        await bob.publish(ProcessingMessage("news.a", 2))
        await wait_until(lambda: to_alice[-1:] == [2], 10, "bob's message after he was allowed again")
        await bob.ready(5)
        await alice.ready(5)
        assert to_alice.count(2) == 1 and to_alice.count("while revoked") <= queued[0]  # refused ones: never
        assert bob._failure is None  # it never gave up: no restart was needed


async def test_control_topics_are_no_channel_between_members(policed: Any, keys: Path) -> None:
    """Issue 22, item 3: with a policy that allows alice and bob nothing of payroll, they could still
    exchange data on `_zmqbus.payroll` (every key may use `_zmqbus.`). Now control topics are an exact,
    typed set: another `_zmqbus.` topic, content on a probe, and a tail copy of a control topic are
    dropped (`control_denied`); the bus's own control traffic (probes, presence, discovery, statistics)
    goes on."""
    from zmqbus.core.topics import tail_prefix

    fwd, policy = policed
    got: list[Any] = []
    async with member(fwd, keys, "alice", policy=policy) as alice, member(fwd, keys, "bob", policy=policy) as bob:
        rogue(alice, bob)
        bob.subscribe("bob", "_zmqbus.payroll", lambda m: got.append(("payroll", m.content)))  # refused
        bob.subscribe("bob", "_zmqbus.probe.secret", lambda m: got.append(("probe", m.content)))  # a probe topic
        await bob.ready(5)
        await alice.ready(5)
        await alice.publish(ProcessingMessage("_zmqbus.payroll", {"salary": 1}))
        await alice.publish(ProcessingMessage("_zmqbus.probe", "salaries"), topic="_zmqbus.probe.secret")
        await alice.publish(ProcessingMessage("_zmqbus.probe", None), topic="_zmqbus.probe.secret")  # a real probe
        await wait_until(lambda: ("probe", None) in got, 5, "the empty probe")
        await alice.ready(5)  # behind everything alice sent
        assert got == [("probe", None)]
        refused = fwd.statistics().refused
        # the subscription and the probe with content (the payroll message never left alice: with the
        # subscription refused, no subscriber of it reached her socket)
        assert refused["control_denied"] >= 2
        # a tail copy of a control topic is never legitimate (bob subscribes the tail so it leaves alice)
        bob.subscribe("bob", "#.presence", lambda m: got.append(("tail", m.content)))
        await bob.ready(5)
        await alice.ready(5)
        link = alice._link
        assert link is not None
        link.send(tail_prefix("presence") + b"_zmqbus.presence\x00\x9e")
        await alice.ready(5)
        denied = refused["control_denied"]
        await wait_until(lambda: fwd.statistics().refused["control_denied"] > denied, 5, "the tail copy refused")
        # the bus's own control traffic: discovery, presence, requests, statistics
        assert not [g for g in got if g[0] == "tail"]
        bob.serve("payroll.compute", lambda m: "ok")
        assert (await bob.request("payroll.compute", ProcessingMessage("q", 1), timeout=5)).content == "ok"
