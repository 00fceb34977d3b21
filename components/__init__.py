"""Runnable components: infrastructure (error_handler, state_tracker) and the example workflow (ingest).

Run one with ``zmqbus run zmqbus.components.ingest:IngestManager``, or all of them with
``zmqbus demo`` / ``zmqbus up``.
"""
