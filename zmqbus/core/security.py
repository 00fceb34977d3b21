"""CURVE security, the pure part: who may connect, which endpoints need keys, ZAP decisions.

Contracts:

* Keys are CURVE keys in Z85 text (40 characters), as pyzmq's certificate
  files hold them. A :class:`KeyRing` is what one bus member or forwarder
  knows: its own pair, the forwarder's public key (members), and the public
  keys allowed to connect to the sockets it binds (the allow-list, by name).
* **Fail closed**: :func:`check_endpoint` refuses a network endpoint (tcp not on
  loopback) when no keys are configured, unless ``insecure`` is set
  explicitly; ``ipc://`` and ``inproc://`` stay on one host and need none.
* :func:`zap_decide` answers one ZAP request (RFC 27) from an allow-list:
  only the CURVE mechanism, only a listed public key. The reply's user id is
  the key's name, which ZeroMQ attaches to every message of that connection.

Pure code: no sockets, no event loop.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field

from .errors import InsecureEndpoint, SecurityError

__all__ = [
    "KeyRing",
    "check_endpoint",
    "needs_keys",
    "NETWORK_SCHEMES",
    "zap_decide",
    "ZapOutcome",
    "ZapDomain",
    "ZAP_VERSION",
    "allow_list_changes",
]

ZAP_VERSION = b"1.0"
Z85_KEY_LENGTH = 40


@dataclass(frozen=True)
class KeyRing:
    """The CURVE keys one process uses (see the module docstring and docs/SECURITY.md).

    :param name: this member's key name (its files are ``NAME.key`` / ``NAME.key_secret``).
    :param public: its public key, Z85.
    :param secret: its secret key, Z85.
    :param server: the forwarder's public key, Z85 (``None`` on the forwarder itself).
    :param allowed: public key (Z85) -> name of every key allowed to connect to
        what this process binds (the forwarder's endpoints, a responder's ROUTER).
    :param allowed_dir: where ``allowed`` was read from, for reloads.
    """

    name: str
    public: bytes
    secret: bytes = field(repr=False)
    server: bytes | None = None
    allowed: Mapping[bytes, str] = field(default_factory=dict)
    allowed_dir: str | None = None

    def __post_init__(self) -> None:
        for what, key in (("public", self.public), ("secret", self.secret), ("server", self.server)):
            if key is not None and len(key) != Z85_KEY_LENGTH:
                raise SecurityError(f"{self.name}: the {what} key is not a 40-character Z85 CURVE key")
        for key in self.allowed:
            if len(key) != Z85_KEY_LENGTH:
                raise SecurityError(f"allow-list of {self.name}: {key!r} is not a 40-character Z85 CURVE key")

    def allows(self, public: bytes) -> bool:
        return public in self.allowed


#: Transports that reach beyond this host (``ipc://`` and ``inproc://`` do not).
NETWORK_SCHEMES = frozenset({"tcp", "ws", "wss", "udp", "pgm", "epgm", "norm", "tipc", "vmci"})


def allow_list_changes(old: Mapping[bytes, str], new: Mapping[bytes, str]) -> tuple[list[str], list[str]]:
    """The names of the keys an allow-list reload adds and removes, sorted."""
    return (sorted(new[k] for k in new.keys() - old.keys()), sorted(old[k] for k in old.keys() - new.keys()))


def needs_keys(endpoint: str) -> bool:
    """True for an endpoint other hosts may reach: tcp on anything but a loopback address
    (127.0.0.0/8, ::1, localhost), and the other network transports. ``ipc://`` and
    ``inproc://`` stay on one host; an unknown scheme is left to ZeroMQ to refuse."""
    scheme, _, rest = endpoint.partition("://")
    if scheme not in NETWORK_SCHEMES:
        return False
    if scheme != "tcp":
        return True
    host = rest.rsplit(":", 1)[0]
    if ";" in host:  # "source;destination": the destination decides
        host = host.split(";", 1)[1]
    host = host.strip("[]")
    if host == "localhost":
        return False
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:
        return True  # a name or an interface ("eth0", "*"): may be reachable from elsewhere


def check_endpoint(endpoint: str, keys: KeyRing | None, insecure: bool, what: str) -> None:
    """Fail closed: raise :class:`InsecureEndpoint` for a non-local endpoint without keys."""
    if keys is None and not insecure and needs_keys(endpoint):
        raise InsecureEndpoint(
            f"refusing to {what} {endpoint} without CURVE keys: anyone who reaches it could read and forge "
            f"the bus's traffic. Give keys (--keys DIR / $ZMQBUS_KEYS, see docs/SECURITY.md) or pass "
            f"--insecure (insecure=True) to run it in clear"
        )


@dataclass(frozen=True)
class ZapOutcome:
    """One ZAP decision: the reply to send and, when denied, why (a counter's name)."""

    reply: list[bytes]
    denied: str | None
    user: str | None


@dataclass(frozen=True)
class ZapDomain:
    """What one server socket accepts: CURVE clients whose *binary* (32-byte) public key is in
    ``allowed`` (key -> name), or, with ``allowed`` None, plaintext (NULL) clients only."""

    allowed: Mapping[bytes, str] | None


def zap_decide(frames: list[bytes], domain: ZapDomain | None, admit: str | None = None) -> ZapOutcome:
    """Answer one ZAP request (RFC 27).

    ``domain`` is the policy of the request's domain (``None``: unknown, so
    deny). ``admit`` is a reason to refuse even an acceptable client (a limit
    reached, e.g. ``connection_limit``). The reply carries status 200 and the
    key's name as user id, or 400 with a reason.
    """
    if len(frames) < 6:
        return ZapOutcome([], "malformed", None)  # no request id to answer: dropped
    version, request_id, _domain, _address, _identity, mechanism = frames[:6]
    credentials = frames[6:]

    def reply(status: bytes, text: bytes, user: str = "") -> list[bytes]:
        return [ZAP_VERSION, request_id, status, text, user.encode(), b""]

    if version != ZAP_VERSION:
        return ZapOutcome(reply(b"400", b"unsupported ZAP version"), "malformed", None)
    if domain is None:
        return ZapOutcome(reply(b"400", b"unknown domain"), "unknown_domain", None)
    if domain.allowed is None:
        if mechanism != b"NULL":
            return ZapOutcome(reply(b"400", b"plaintext only"), "mechanism", None)
        name = ""
    else:
        if mechanism != b"CURVE" or len(credentials) != 1 or len(credentials[0]) != 32:
            return ZapOutcome(reply(b"400", b"CURVE required"), "mechanism", None)
        found = domain.allowed.get(credentials[0])
        if found is None:
            return ZapOutcome(reply(b"400", b"key not allowed"), "unknown_key", None)
        name = found
    if admit is not None:
        # 400, not 300 ("try later"): only a 400 reaches the client (a CURVE client's monitor), so it
        # learns why at once instead of reconnecting silently.
        return ZapOutcome(reply(b"400", admit.encode()), admit, None)
    return ZapOutcome(reply(b"200", b"OK", name), None, name)
