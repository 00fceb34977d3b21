"""``zmqbus soak``: a loss, duplication and double-execution checker over real processes and faults."""
