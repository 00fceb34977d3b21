"""``python -m zmqbus`` is the ``zmqbus`` command."""

from .cli import main

main(prog_name="zmqbus")
