"""Request/reply, peer to peer over ROUTER sockets: the responder, the caller and their port.

Kept so that ``zmqbus.bus.rpc`` imports go on working; the code lives in
:mod:`.port`, :mod:`.responder` and :mod:`.caller`.
"""

from __future__ import annotations

from ..core.control import DISCOVER_TOPIC, PRESENCE_TOPIC
from .caller import Caller
from .port import BusPort, RpcOptions, ServiceHandler
from .responder import Responder

__all__ = ["Responder", "Caller", "BusPort", "RpcOptions", "ServiceHandler", "PRESENCE_TOPIC", "DISCOVER_TOPIC"]
