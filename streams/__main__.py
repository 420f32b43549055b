"""``python -m streams ...`` is the ``agentstream`` command."""

from streams.cli.main import main

main()
