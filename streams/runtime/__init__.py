"""The batched exactly-once runtime the hot agents run on.

- ``agent``: what an agent is (inputs, tables, a batch processor) and what a processor sees;
- ``tables``: per-partition state in memory, restored from compacted changelog topics;
- ``loop``: one agent's consumer + transactional producer loop, which owns the commit order;
- ``partitioning``: the murmur2 key -> partition rule the runtime routes by;
- ``service``: the Faust service that runs the loops of a worker, one thread each.
"""

from streams.runtime.agent import AgentContext, Batch, BatchProcessor, Outputs, ProcessorBase, RuntimeAgent
from streams.runtime.partitioning import KeyPartitioner
from streams.runtime.tables import PartitionTable, changelog_topic

__all__ = [
    "AgentContext",
    "Batch",
    "BatchProcessor",
    "KeyPartitioner",
    "Outputs",
    "PartitionTable",
    "ProcessorBase",
    "RuntimeAgent",
    "changelog_topic",
]
