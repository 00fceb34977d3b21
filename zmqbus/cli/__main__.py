"""``python -m zmqbus.cli`` is the ``zmqbus`` command."""

from . import main

main(prog_name="zmqbus")
