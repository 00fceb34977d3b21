"""A bus peer written from docs/PROTOCOL.md alone: plain pyzmq + msgpack, no zmqbus.

Run as ``python raw_peer.py PUB_ENDPOINT SUB_ENDPOINT``. It prints ``ready``
once its readiness probe has come back through the forwarder, answers the first
``interop.to_raw`` message with three ``interop.from_raw`` messages (sequence
1, 2, 3) and one more with sequence 9, prints ``sent`` and exits.

Run as ``python raw_peer.py PUB_ENDPOINT SUB_ENDPOINT serve`` it is a
responder for the service ``raw.upper`` (PROTOCOL.md section 8): it binds a
ROUTER, announces itself on ``_zmqbus.presence`` and answers requests with
their content upper-cased, until killed.
"""

import sys
import time

import msgpack
import zmq


def main(pub: str, sub: str) -> None:
    assert "zmqbus" not in sys.modules
    ctx = zmq.Context()
    s = ctx.socket(zmq.SUB)
    s.connect(sub)
    s.subscribe(b"interop.to_raw")
    s.subscribe(b"_zmqbus.probe.raw")
    p = ctx.socket(zmq.PUB)
    p.connect(pub)
    # The readiness handshake of PROTOCOL.md section 6, done by hand.
    deadline = time.time() + 20
    while time.time() < deadline:
        p.send(
            b"_zmqbus.probe.raw.1\x00"
            + msgpack.packb(
                [
                    2,
                    "_zmqbus.probe",
                    "raw-probe",
                    "raw-probe",
                    None,
                    "raw",
                    None,
                    time.time(),
                    "raw-pub",
                    0,
                    1,
                    None,
                    None,
                    None,
                ]
            )
        )
        if s.poll(50) and s.recv().startswith(b"_zmqbus.probe.raw"):
            break
    else:
        print("no probe", flush=True)
        return
    print("ready", flush=True)
    while True:
        topic, _, data = s.recv().partition(b"\x00")  # PROTOCOL.md section 2: topic, NUL, payload
        if topic == b"interop.to_raw":
            break
    fields = msgpack.unpackb(data, strict_map_key=False)  # PROTOCOL.md section 3
    assert fields[0] == 2 and len(fields) >= 14
    reply = {"echo": fields[13], "type_seen": fields[1], "source_seen": fields[5]}
    for seq in (1, 2, 3):
        p.send(
            b"interop.from_raw\x00"
            + msgpack.packb(
                [
                    2,
                    "interop.from_raw",
                    f"raw-{seq}",
                    fields[3],
                    fields[2],
                    "raw",
                    "pytest",
                    time.time(),
                    "raw-pub",
                    seq,
                    1,
                    None,
                    {"lang": "raw"},
                    reply,
                ]
            )
        )
    p.send(
        b"interop.from_raw\x00"
        + msgpack.packb(
            [
                2,
                "interop.from_raw",
                "raw-9",
                fields[3],
                None,
                "raw",
                None,
                time.time(),
                "raw-pub",
                9,
                1,
                None,
                None,
                "last",
            ]
        )
    )
    print("sent", flush=True)
    p.close(linger=2000)
    s.close(linger=0)
    ctx.term()


def serve(pub: str, sub: str) -> None:
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.bind("tcp://127.0.0.1:*")
    endpoint = router.getsockopt(zmq.LAST_ENDPOINT).decode()
    p = ctx.socket(zmq.PUB)
    p.connect(pub)
    seq = 0
    next_announce = 0.0
    print("serving", endpoint, flush=True)
    while True:
        if time.time() >= next_announce:
            seq += 1
            presence = {
                "instance": "raw-responder",
                "endpoint": endpoint,
                "services": ["raw.upper"],
                "interval": 0.2,
                "liveness": 3,
                "load": 0,
                "leaving": False,
            }
            p.send(
                b"_zmqbus.presence\x00"
                + msgpack.packb(
                    [
                        2,
                        "_zmqbus.presence",
                        f"raw-p-{seq}",
                        f"raw-p-{seq}",
                        None,
                        "raw",
                        None,
                        time.time(),
                        "raw-responder",
                        seq,
                        1,
                        None,
                        None,
                        presence,
                    ]
                )
            )
            next_announce = time.time() + 0.2
        if not router.poll(50):
            continue
        caller, body = router.recv_multipart()
        kind, _service, payload = body.split(b"\x00", 2)  # PROTOCOL.md section 8.2
        assert kind == b"REQ"
        req = msgpack.unpackb(payload, strict_map_key=False)
        reply = [
            2,
            "raw.upper.reply",
            f"raw-r-{req[2]}",
            req[3],
            req[2],
            "raw",
            req[5],
            time.time(),
            "raw-responder",
            0,
            1,
            None,
            None,
            str(req[13]).upper(),
        ]
        router.send_multipart([caller, b"REP\x00" + msgpack.packb(reply)])


if __name__ == "__main__":
    if sys.argv[3:] == ["serve"]:
        serve(sys.argv[1], sys.argv[2])
    else:
        main(sys.argv[1], sys.argv[2])
