"""A bus peer written from docs/PROTOCOL.md alone: plain pyzmq + msgpack, no zmqbus.

Run as ``python raw_peer.py PUB_ENDPOINT SUB_ENDPOINT``. It prints ``ready``
once its readiness probe has come back through the forwarder, answers the first
``interop.to_raw`` message with three ``interop.from_raw`` messages (sequence
1, 2, 3) and one more with sequence 9, prints ``sent`` and exits.
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
        p.send_multipart([b"_zmqbus.probe.raw.1", msgpack.packb(
            [1, "_zmqbus.probe", "raw-probe", "raw-probe", None, "raw", None, time.time(), "raw-pub", 0, 1, None,
             None, None])])
        if s.poll(50) and s.recv_multipart()[0].startswith(b"_zmqbus.probe.raw"):
            break
    else:
        print("no probe", flush=True)
        return
    print("ready", flush=True)
    while True:
        topic, data = s.recv_multipart()
        if topic == b"interop.to_raw":
            break
    fields = msgpack.unpackb(data)
    assert fields[0] == 1 and len(fields) >= 14
    reply = {"echo": fields[13], "type_seen": fields[1], "source_seen": fields[5]}
    for seq in (1, 2, 3):
        p.send_multipart([b"interop.from_raw", msgpack.packb(
            [1, "interop.from_raw", f"raw-{seq}", fields[3], fields[2], "raw", "pytest", time.time(), "raw-pub",
             seq, 1, None, {"lang": "raw"}, reply])])
    p.send_multipart([b"interop.from_raw", msgpack.packb(
        [1, "interop.from_raw", "raw-9", fields[3], None, "raw", None, time.time(), "raw-pub", 9, 1, None, None,
         "last"])])
    print("sent", flush=True)
    p.close(linger=2000)
    s.close(linger=0)
    ctx.term()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
