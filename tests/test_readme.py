"""The README's first example runs as written, against a real forwarder."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from typing import Any

README = os.path.join(os.path.dirname(__file__), "..", "README.md")


def test_first_example_runs(tcp_pair: tuple[str, str], spawn_forwarder: Any) -> None:
    spawn_forwarder(*tcp_pair, stats_interval=None)
    with open(README) as f:
        example = re.search(r"```python\n(.*?)```", f.read(), re.S)
    assert example is not None
    env = dict(os.environ, ZMQBUS_PUB=tcp_pair[0], ZMQBUS_SUB=tcp_pair[1])
    done = subprocess.run([sys.executable, "-c", example.group(1)], env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "MessageType.ORDER_START_REQUEST {'order_id': 7} order-7"
