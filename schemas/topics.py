"""The names of the topics the code reads and writes, each named once (declared in ``topology.yaml``).

``topology validate`` checks that every name here is declared there.
"""

from __future__ import annotations

COMMANDS = "commands.platform"
EVENTS = "events.platform"
RESULTS = "results.commands"
DEADLETTER = "deadletter.commands"
FACTS = "facts.tasks"
BILLING = "billing.usage"
PROVISIONING = "provisioning.requests"
SAGA_BOOKS = "saga_books"  # the saga shell's table (changelog ``<app>-saga_books-changelog``)
SNAPSHOTS = {"agent": "snapshots.agent", "task": "snapshots.task", "tenant": "snapshots.tenant", "dashboard": "snapshots.dashboard"}

#: Every topic named above.
ALL = (COMMANDS, EVENTS, RESULTS, DEADLETTER, FACTS, BILLING, PROVISIONING, *SNAPSHOTS.values())
