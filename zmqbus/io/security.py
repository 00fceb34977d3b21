"""CURVE on real sockets: key files, the ZAP handler, server and client socket settings, handshake watches.

Rules of this module:

* Key files are pyzmq's certificate format (``zmq.auth``): ``NAME.key``
  holds a public key, ``NAME.key_secret`` the pair. A bus's key folder
  (docs/SECURITY.md)::

      KEYS/forwarder.key          the forwarder's public key (every member has it)
      KEYS/forwarder.key_secret   its pair (on the forwarder's host only)
      KEYS/NAME.key_secret        a member's pair
      KEYS/allowed/NAME.key       the public keys allowed on the bus

  Anything missing, unreadable, malformed, or a secret readable by others, is
  a one-line :class:`SecurityError` at start: never a fallback to plaintext.
* One ZAP handler per ZeroMQ context (libzmq asks ``inproc://zeromq.zap.01``),
  started before the first CURVE server socket binds and kept for the
  context's life. Each server socket gets its own ZAP domain with its own
  allow-list, replaceable at any time (a reload). Server sockets also set
  ``ZAP_ENFORCE_DOMAIN``: without an answering handler a handshake fails
  instead of passing.
* A client's handshakes are watched through a socket monitor, so a refused
  key becomes :class:`AuthenticationRefused` within seconds. A monitor is
  read until libzmq's ``MONITOR_STOPPED`` (DESIGN.md section 6: an unread
  monitor blocks libzmq's I/O thread).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import logging
import os
import shutil
import stat
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path

import zmq
from zmq.utils import z85

from ..core import config
from ..core.errors import AuthenticationRefused, SecurityError
from ..core.policy import Policy
from ..core.ratelog import RateLimitedLog
from ..core.security import KeyRing, ZapDomain, allow_list_changes, check_endpoint, zap_decide
from .sockets import Channel, get_context, mapped_errors, mark_background
from .transport import BusLink, SocketConfig

__all__ = [
    "load_keys",
    "keygen",
    "allowed_keys",
    "zap_handler",
    "ZapHandler",
    "apply_server",
    "apply_client",
    "HandshakeWatch",
    "FORWARDER_KEY_NAME",
    "config_keys",
    "secure_link",
    "load_policy",
    "config_policy",
    "reread_keys",
]

log = logging.getLogger(__name__)

FORWARDER_KEY_NAME = "forwarder"
_ZAP_ENDPOINT = "inproc://zeromq.zap.01"
_ZAP_ENFORCE_DOMAIN = getattr(zmq, "ZAP_ENFORCE_DOMAIN", 93)


# -- key files -----------------------------------------------------------------


def _read_cert(path: Path, secret: bool) -> tuple[bytes, bytes | None]:
    if not path.is_file():
        raise SecurityError(
            f"key file {path} not found (create it with: zmqbus keygen {path.name.split('.')[0]} --dir {path.parent})"
        )
    if secret and path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise SecurityError(f"secret key file {path} is readable by others: run chmod 600 {path}")
    import zmq.auth  # here, not at import: it costs tens of milliseconds at every process start

    try:
        public, secret_key = zmq.auth.load_certificate(str(path))
    except (OSError, ValueError) as exc:
        raise SecurityError(f"key file {path}: {exc}") from None
    for key in (public, secret_key):
        if key is not None and not _valid(key):
            raise SecurityError(f"key file {path} holds a malformed key (not 40 characters of Z85)")
    if secret and secret_key is None:
        raise SecurityError(f"key file {path} has no secret key (a .key_secret file is needed)")
    return public, secret_key


def _valid(key: bytes) -> bool:
    try:
        return len(key) == 40 and len(z85.decode(key)) == 32
    except (ValueError, KeyError, struct.error):
        return False


def allowed_keys(directory: str | os.PathLike[str]) -> dict[bytes, str]:
    """Public key (Z85) -> name of every ``*.key`` file in ``directory``."""
    folder = Path(directory)
    if not folder.is_dir():
        raise SecurityError(
            f"allow-list folder {folder} not found (zmqbus keygen NAME --dir "
            f"{folder.parent} puts each new public key there)"
        )
    out: dict[bytes, str] = {}
    for path in sorted(folder.glob("*.key")):
        public, _ = _read_cert(path, secret=False)
        out[public] = path.name[: -len(".key")]
    return out


def load_keys(directory: str | os.PathLike[str], name: str, *, server: bool = True) -> KeyRing:
    """Read ``name``'s pair, the forwarder's public key (when ``server``) and the allow-list from a key folder."""
    folder = Path(directory)
    if not folder.is_dir():
        raise SecurityError(f"key folder {folder} not found (see docs/SECURITY.md)")
    public, secret = _read_cert(folder / f"{name}.key_secret", secret=True)
    assert secret is not None
    server_key = _read_cert(folder / f"{FORWARDER_KEY_NAME}.key", secret=False)[0] if server else None
    allowed_dir = folder / "allowed"
    return KeyRing(name, public, secret, server_key, allowed_keys(allowed_dir), str(allowed_dir))


def keygen(
    directory: str | os.PathLike[str], name: str, *, allow: bool = True, force: bool = False
) -> tuple[Path, Path]:
    """Write ``NAME.key`` and ``NAME.key_secret`` (owner-only) into ``directory``; with ``allow``,
    also put the public key into ``directory/allowed/``. Returns the two paths."""
    if not name or "/" in name or name.startswith("."):
        raise SecurityError(f"bad key name {name!r}")
    folder = Path(directory)
    public_path, secret_path = folder / f"{name}.key", folder / f"{name}.key_secret"
    if not force and (public_path.exists() or secret_path.exists()):
        raise SecurityError(f"{secret_path} already exists (pass --force to replace it)")
    folder.mkdir(parents=True, exist_ok=True)
    import zmq.auth

    old = os.umask(0o077)  # the secret file is never readable by others, not even for a moment
    try:
        zmq.auth.create_certificates(str(folder), name)
    finally:
        os.umask(old)
    os.chmod(secret_path, 0o600)
    os.chmod(public_path, 0o644)
    if allow:
        (folder / "allowed").mkdir(exist_ok=True)
        shutil.copyfile(public_path, folder / "allowed" / public_path.name)
    return public_path, secret_path


def config_keys(server: bool = True) -> KeyRing | None:
    """The keys the environment configures (``$ZMQBUS_KEYS``, ``$ZMQBUS_KEY_NAME``), or None."""
    folder = config.keys_dir()
    if folder is None:
        return None
    return load_keys(folder, config.key_name(None if server else FORWARDER_KEY_NAME), server=server)


def load_policy(path: str | os.PathLike[str]) -> Policy:
    """Read a policy file (TOML, docs/SECURITY.md); raise :class:`SecurityError` in one line."""
    import tomllib

    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise SecurityError(f"cannot read the policy {path}: {exc}") from None
    return Policy.from_dict(data, str(path))


def reread_keys(keys: KeyRing, policy: Policy | None) -> tuple[KeyRing, Policy | None, list[str], list[str]]:
    """Read ``keys``' allow-list folder, and ``policy``'s file if it came from one, again: all is read
    before anything changes (a bad file raises and leaves both in force). Returns the new keys, the new
    policy, and the key names added and removed."""
    if keys.allowed_dir is None:
        raise SecurityError(f"keys {keys.name!r} have no allow-list folder to reload")
    fresh = allowed_keys(keys.allowed_dir)
    if policy is not None and policy.source and os.path.isfile(policy.source):
        policy = load_policy(policy.source)
    added, removed = allow_list_changes(keys.allowed, fresh)
    return dataclasses.replace(keys, allowed=fresh), policy, added, removed


def config_policy() -> Policy | None:
    """The policy the environment names (``$ZMQBUS_POLICY``), or None."""
    path = config.policy_file()
    return None if path is None else load_policy(path)


# -- the ZAP handler ----------------------------------------------------------------


class ZapHandler:
    """Answers libzmq's ZAP requests for every CURVE server socket of one context (a daemon thread)."""

    def __init__(self, ctx: zmq.Context[zmq.Socket[bytes]]) -> None:
        self._ctx = ctx
        self._lock = threading.Lock()
        self._domains: dict[str, ZapDomain] = {}
        self._admit: dict[str, Callable[[], str | None]] = {}
        self._ids = itertools.count(1)
        self._faults = RateLimitedLog(log)
        self.denied: dict[str, dict[str, int]] = {}  # domain -> reason -> count
        self.accepted: dict[str, int] = {}  # domain -> count
        sock = ctx.socket(zmq.REP)
        sock.setsockopt(zmq.LINGER, 0)
        mark_background(sock)
        with mapped_errors(f"bind the ZAP handler at {_ZAP_ENDPOINT}"):
            sock.bind(_ZAP_ENDPOINT)
        self._thread = threading.Thread(target=self._run, args=(sock,), name="zmqbus-zap", daemon=True)
        self._thread.start()

    def register(
        self, allowed: dict[bytes, str] | None, label: str, admit: Callable[[], str | None] | None = None
    ) -> str:
        """A new ZAP domain; returns its name. ``allowed``: the allow-list (Z85 key -> name), or None
        for plaintext clients; ``admit``: called for each acceptable client, returns a reason to
        refuse it anyway (a limit) or None."""
        domain = f"zmqbus-{label}-{next(self._ids)}"
        self.update(domain, allowed)
        if admit is not None:
            self._admit[domain] = admit
        return domain

    def update(self, domain: str, allowed: dict[bytes, str] | None) -> None:
        """Replace a domain's allow-list (new handshakes see it at once)."""
        policy = ZapDomain(None if allowed is None else {z85.decode(key): name for key, name in allowed.items()})
        with self._lock:
            self._domains[domain] = policy

    def unregister(self, domain: str) -> None:
        with self._lock:
            self._domains.pop(domain, None)
            self._admit.pop(domain, None)

    def refused(self, domain: str) -> dict[str, int]:
        """Handshakes refused on ``domain`` so far, by reason (``unknown_key``, ``mechanism``, ...)."""
        return dict(self.denied.get(domain, {}))

    def _run(self, sock: zmq.Socket[bytes]) -> None:
        try:
            while True:
                frames = sock.recv_multipart()
                domain = frames[2].decode(errors="replace") if len(frames) > 2 else ""
                with self._lock:
                    policy, admit = self._domains.get(domain), self._admit.get(domain)
                outcome = zap_decide(frames, policy, None if admit is None else admit())
                if outcome.denied is None:
                    self.accepted[domain] = self.accepted.get(domain, 0) + 1
                else:
                    counts = self.denied.setdefault(domain, {})
                    counts[outcome.denied] = counts.get(outcome.denied, 0) + 1
                    address = frames[3].decode(errors="replace") if len(frames) > 3 else "?"
                    key = z85.encode(frames[6]).decode() if len(frames) > 6 and len(frames[6]) == 32 else "none"
                    self._faults.log(
                        logging.WARNING,
                        f"zap:{domain}:{outcome.denied}",
                        "refused a connection to %s from %s (%s, public key %s)",
                        domain,
                        address,
                        outcome.denied.replace("_", " "),
                        key,
                    )
                if outcome.reply:
                    sock.send_multipart(outcome.reply)
        except zmq.ContextTerminated:
            pass
        except Exception as exc:  # pragma: no cover - a bug here must not pass handshakes: they now fail
            log.error("ZAP handler stopped (CURVE handshakes will fail until restart): %s", exc)
        finally:
            sock.close(0)


_handlers: dict[int, ZapHandler] = {}
_handlers_lock = threading.Lock()


def zap_handler() -> ZapHandler:
    """This process's ZAP handler (for its ZeroMQ context), started on first use."""
    ctx = get_context()
    with _handlers_lock:
        handler = _handlers.get(id(ctx))
        if handler is None or handler._ctx is not ctx:
            handler = _handlers[id(ctx)] = ZapHandler(ctx)
        return handler


def apply_server(sock: zmq.Socket[bytes], keys: KeyRing | None, domain: str) -> None:
    """Make ``sock`` ask the ZAP handler about every client (before it binds): a CURVE server with
    ``keys``, else a plaintext server whose clients ZAP still admits (its limits)."""
    with mapped_errors("configure the server's security"):
        if keys is not None:
            sock.setsockopt(zmq.CURVE_SERVER, 1)
            sock.setsockopt(zmq.CURVE_SECRETKEY, keys.secret)
        sock.setsockopt(zmq.ZAP_DOMAIN, domain.encode())
        sock.setsockopt(_ZAP_ENFORCE_DOMAIN, 1)


def apply_client(sock: zmq.Socket[bytes], keys: KeyRing, server_key: bytes | None) -> None:
    """Make ``sock`` a CURVE client with ``keys``' pair (before it connects); ``server_key`` is the
    public key of the server it connects to next (``None``: given at each connect, as a caller's ROUTER does)."""
    with mapped_errors("configure CURVE (client)"):
        sock.setsockopt(zmq.CURVE_PUBLICKEY, keys.public)
        sock.setsockopt(zmq.CURVE_SECRETKEY, keys.secret)
        if server_key is not None:
            sock.setsockopt(zmq.CURVE_SERVERKEY, server_key)


def secure_link(link: BusLink, keys: KeyRing) -> list[HandshakeWatch]:
    """Make a client's two bus sockets CURVE clients of the forwarder; watch both sockets' handshakes
    (either may be refused alone, by a connection limit)."""
    if keys.server is None:
        raise SecurityError(f"keys {keys.name!r} have no forwarder public key ({FORWARDER_KEY_NAME}.key)")
    apply_client(link.pub.sock, keys, keys.server)
    apply_client(link.sub.sock, keys, keys.server)
    return [
        HandshakeWatch(link.pub.sock, "the forwarder at", keys),
        HandshakeWatch(link.sub.sock, "the forwarder at", keys),
    ]


def open_link(
    sockets: SocketConfig, pub_endpoint: str, sub_endpoint: str, keys: KeyRing | None, insecure: bool
) -> tuple[BusLink, list[HandshakeWatch]]:
    """A client's two bus sockets, connected (CURVE clients of the forwarder with ``keys``), and the watches of
    their handshakes. Raises :class:`InsecureEndpoint` for a non-loopback endpoint without keys (unless
    ``insecure``) and :class:`TransportError` for a bad endpoint; nothing is left open then."""
    for endpoint in (*config.split_endpoints(pub_endpoint), *config.split_endpoints(sub_endpoint)):
        check_endpoint(endpoint, keys, insecure, "connect to")
    link = BusLink(sockets)
    try:
        watches = [] if keys is None else secure_link(link, keys)
        link.connect(pub_endpoint, sub_endpoint)
    except BaseException:
        link.close(0)
        raise
    return link, watches


# -- a client's handshakes ------------------------------------------------------------

_WATCHED = (
    zmq.EVENT_HANDSHAKE_SUCCEEDED
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    | zmq.EVENT_MONITOR_STOPPED
)
_monitor_ids = itertools.count(1)


class HandshakeWatch:
    """Watches one client socket's CURVE handshakes (see the module docstring).

    ``refusal`` is set when the last handshake failed (a ZAP refusal, or a
    wrong server key) and cleared by the next success.
    """

    #: Seconds before a refused endpoint is tried again (doubling after each refusal, at most the last).
    RETRY_FIRST, RETRY_MAX = 1.0, 30.0

    def __init__(self, sock: zmq.Socket[bytes], what: str, keys: KeyRing) -> None:
        self.what = what
        self.keys = keys
        self.refusal: str | None = None
        self.succeeded = 0
        self.failed = 0
        self.retries = 0
        self._sock = sock
        # libzmq ends a session whose handshake failed and never reconnects it (a protocol error, unlike a
        # lost connection): a refused endpoint is connected again here, with backoff, until accepted
        self._retry: dict[str, tuple[float, float]] = {}  # endpoint -> (when, the delay after that)
        addr = f"inproc://zmqbus-handshakes-{os.getpid()}-{next(_monitor_ids)}"
        with mapped_errors("monitor a socket"):
            self.channel = Channel(sock.get_monitor_socket(_WATCHED, addr))
        self._stopped = False

    def poll(self) -> None:
        """Read every event queued so far (never blocks)."""
        sock = self.channel.sock
        while not self._stopped:
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            except zmq.ZMQError:
                self._stopped = True
                return
            event, value = struct.unpack("=hi", frames[0][:6])
            endpoint = frames[1].decode(errors="replace") if len(frames) > 1 else "?"
            if event & zmq.EVENT_MONITOR_STOPPED:
                self._stopped = True
            elif event & zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self.succeeded += 1
                self.refusal = None
                self._retry.pop(endpoint, None)
            else:
                self.failed += 1
                delay = self._retry.get(endpoint, (0.0, self.RETRY_FIRST))[1]
                self._retry[endpoint] = (time.monotonic() + delay, min(delay * 2, self.RETRY_MAX))
                if not event & zmq.EVENT_HANDSHAKE_FAILED_AUTH:
                    why = "the handshake failed (a wrong server key, or a server without CURVE)"
                else:  # the server's log and statistics().refused say which
                    why = "the server refused this key (not in its allow-list) or is at its connection limit"
                self.refusal = (
                    f"{self.what} {endpoint}: {why} (public key {self.keys.public.decode()}, "
                    f"key name {self.keys.name!r}; status {value})"
                )

    def check(self) -> None:
        """Raise :class:`AuthenticationRefused` if the last handshake failed."""
        self.poll()
        if self.refusal is not None:
            raise AuthenticationRefused(self.refusal)

    async def run(self) -> None:
        """Read events as they come, until cancelled (an unread monitor would block libzmq); connect a
        refused endpoint again when its backoff is over (a key allowed again, a forwarder below its
        connection limit again: the member comes back by itself)."""
        while not self._stopped:
            self.poll()
            self._reconnect_due()
            await self.channel.wait_readable(0.5 if self._retry else 1.0)

    def _reconnect_due(self) -> None:
        now = time.monotonic()
        for endpoint, (when, delay) in list(self._retry.items()):
            if now < when:
                continue
            self._retry[endpoint] = (float("inf"), delay)  # the next failure sets the next time
            self.retries += 1
            try:
                with contextlib.suppress(zmq.ZMQError):  # its session is gone already
                    self._sock.disconnect(endpoint)
                self._sock.connect(endpoint)
            except zmq.ZMQError as exc:  # the socket closed meanwhile
                log.debug("reconnecting %s failed: %s", endpoint, exc)
                self._retry.pop(endpoint, None)

    async def close(self, timeout: float) -> None:
        """After the watched socket is closed: read until MONITOR_STOPPED (at most ``timeout`` s), then close."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not self._stopped and loop.time() < deadline:
            self.poll()
            if not self._stopped:
                await self.channel.wait_readable(min(0.05, max(0.0, deadline - loop.time())))
        if not self._stopped:
            log.warning("%s: the socket monitor did not stop within %g s", self.what, timeout)
        with contextlib.suppress(Exception):
            self.channel.close(0)
