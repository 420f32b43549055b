"""``agentstream demo``: the whole pipeline on embedded defaults, from nothing to a summary.

Brings the local stack up, applies the topology, starts a worker, sends a realistic burst of
commands for a few tenants (with a few bad ones on purpose), and prints what happened; then
shows drift detection (a latency shift for one agent type, its alert), one event read as any
Kafka tool reads it (confluent-kafka's ``AvroDeserializer`` and the schema registry) and the
throughput. It stops what it started.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from streams.cli.console import console, fail
from schemas.settings import Settings, get_settings

if TYPE_CHECKING:
    from sinks.query_client import QueryClient

AGENT_TYPES = ["llm", "retriever", "tool-runner", "planner"]
REGIONS = ["eu-west-1", "us-east-1", "ap-south-1"]
TASK_TYPES = ["summarise", "search", "plan", "answer"]
TENANTS = ["acme", "globex", "initech", "umbrella", "hooli", "stark", "wayne", "tyrell"]


@dataclass
class Tally:
    """Outcomes per tenant and rejection code."""

    accepted: Counter = field(default_factory=Counter)
    rejected: Counter = field(default_factory=Counter)
    events: Counter = field(default_factory=Counter)
    dead_letters: int = 0


def _plan(tenants: list[str], agents: int, tasks: int = 3, seed: int = 7) -> list[list[tuple[str, str, dict, dict]]]:
    """Phases of (command, tenant, payload, options); commands within a phase are independent."""
    rng = random.Random(seed)
    ids = {t: [f"{t}-agent-{i:03d}" for i in range(agents)] for t in tenants}
    phases: list[list[tuple[str, str, dict, dict]]] = [
        [("CreateTenant", t, {"name": t.title(), "region": rng.choice(REGIONS), "plan": rng.choice(["pro", "enterprise"])}, {}) for t in tenants],
        [("ConfigureTenant", t, {"settings": {"max_agents": str(agents * 2), "timezone": "UTC"}}, {}) for t in tenants],
        [
            ("CreateAgent", t, {"agent_id": a, "name": a.replace("-", " ").title(), "agent_type": rng.choice(AGENT_TYPES), "region": rng.choice(REGIONS), "capabilities": rng.sample(["search", "code", "sql", "vision", "chat"], 2)}, {})
            for t in tenants
            for a in ids[t]
        ],
        [("StartAgent", t, {"agent_id": a}, {}) for t in tenants for a in ids[t]],
        [("AssignTask", t, {"task_id": f"{a}-task-{k}", "agent_id": a, "task_type": rng.choice(TASK_TYPES)}, {}) for t in tenants for a in ids[t] for k in range(tasks)],
        [
            ("CompleteTask", t, {"task_id": f"{a}-task-{k}", "cost": round(rng.uniform(0.001, 0.05), 4)}, {})
            if rng.random() < 0.9
            else ("FailTask", t, {"task_id": f"{a}-task-{k}", "error": "tool timeout", "cost": 0.001}, {})
            for t in tenants
            for a in ids[t]
            for k in range(tasks)
        ],
        [("ConfigureAgent", t, {"agent_id": a, "config": {"temperature": f"{rng.random():.2f}", "model": "small"}}, {}) for t in tenants for a in ids[t][::2]],
        [("StopAgent", t, {"agent_id": a, "reason": "scale-down"}, {}) for t in tenants for a in ids[t][::5]],
        # Bad on purpose: each must come back as a typed rejection and change nothing.
        [
            ("CreateAgent", tenants[0], {"agent_id": ids[tenants[0]][0], "name": "Dup", "agent_type": "llm"}, {}),  # already exists
            ("StartAgent", tenants[0], {"agent_id": "no-such-agent"}, {}),  # NotFound
            ("StopAgent", tenants[-1], {"agent_id": ids[tenants[-1]][0]}, {"expected_version": 1}),  # stale version
            ("StopAgent", tenants[-1], {"agent_id": ids[tenants[-1]][0]}, {}),  # already stopped
            ("AssignTask", tenants[-1], {"task_id": "late", "agent_id": ids[tenants[-1]][0], "task_type": "chat"}, {}),  # agent stopped
            ("CompleteTask", tenants[0], {"task_id": f"{ids[tenants[0]][0]}-task-0"}, {}),  # already finished
            ("AssignTask", tenants[0], {"task_id": "too-dear", "agent_id": ids[tenants[0]][-1], "task_type": "chat", "max_cost": 10**13}, {}),  # QuotaExceeded: budget
        ],
    ]
    return phases


async def _run(settings: Settings, tenants: list[str], agents: int, ready_timeout: float) -> Tally:
    from streams.client import CommandClient
    from schemas.messages import CommandAccepted

    tally = Tally()
    phases = _plan(tenants, agents)
    total = sum(len(p) for p in phases) + 1
    async with CommandClient(settings) as client:
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console) as progress:
            task = progress.add_task("waiting for the worker to join the group", total=total)

            def record(tenant: str, outcome: object) -> None:
                if isinstance(outcome, CommandAccepted):
                    tally.accepted[tenant] += 1
                    tally.events.update(e.type for e in outcome.events)
                else:
                    tally.rejected[(tenant, outcome.code)] += 1  # type: ignore[attr-defined]
                progress.advance(task)

            first, *rest = phases[0]
            record(first[1], await client.send(first[0], first[1], first[2], timeout=ready_timeout))
            for phase in [rest, *phases[1:]]:
                progress.update(task, description=f"sending {phase[0][0] if phase else ''}")
                results = await asyncio.gather(*(client.send(kind, tenant, data, **opts) for kind, tenant, data, opts in phase))
                for (_, tenant, _, _), outcome in zip(phase, results):
                    record(tenant, outcome)
            progress.update(task, description="sending a poison message")
            poison = await client.send_raw(tenants[0], b"\xde\xad\xbe\xef", [("agentstream.schema", b"CreateAgent"), ("agentstream.schema_version", b"1")])
            tally.dead_letters += 1
            progress.update(task, description=f"done ({poison.code} for the poison message, kept in the dead-letter topic)")
    return tally


def _worker_records(settings: Settings) -> int:
    """Commands the worker's command handler has committed so far (its ``/runtime`` page)."""
    import json
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{settings.web_port}/runtime", timeout=5) as response:
        agents = json.loads(response.read())["agents"]
    return sum(a["records"] for a in agents if a["agent"] == "command_handler")


def _burst(settings: Settings, tenants: list[str], agents: int, commands: int, timeout: float = 120.0) -> None:
    """Send ``commands`` ConfigureAgents as fast as a client can and show the rate the worker reached."""
    import time

    from confluent_kafka import Producer

    from connectors.kafka_config import confluent_config
    from schemas import default_registry
    from schemas.messages import CommandMeta, new_id
    from schemas.wire import bind

    registry = default_registry()
    bind(registry, settings, eager=False)
    producer = Producer({**confluent_config(settings), "partitioner": "murmur2_random", "linger.ms": 10})
    before = _worker_records(settings)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console) as progress:
        sending = progress.add_task("burst: sending", total=commands)
        deciding = progress.add_task("burst: decided (exactly once)", total=commands)
        started = time.monotonic()
        for i in range(commands):
            tenant = tenants[i % len(tenants)]
            value, headers = registry.encode("ConfigureAgent", {"agent_id": f"{tenant}-agent-{i % agents:03d}", "config": {"burst": str(i)}})
            while True:
                try:
                    producer.produce("commands.platform", value, tenant.encode(), headers=headers + CommandMeta(command_id=new_id(), tenant_id=tenant).to_headers())
                    break
                except BufferError:
                    producer.poll(0.05)
            producer.poll(0)
            if i % 500 == 0:
                progress.update(sending, completed=i)
                progress.update(deciding, completed=_worker_records(settings) - before)
        producer.flush(30)
        progress.update(sending, completed=commands)
        deadline = time.monotonic() + timeout
        done = 0
        while done < commands and time.monotonic() < deadline:
            done = _worker_records(settings) - before
            progress.update(deciding, completed=done)
            time.sleep(0.1)
        elapsed = time.monotonic() - started
    console.print(f"burst: {done:,} commands sent and decided in {elapsed:.1f}s: [bold]{done / elapsed:,.0f} commands/s[/] end to end (one worker, exactly once, on this machine)")


def _drift(settings: Settings, tenant: str, agent_type: str = "coder", other: str = "reviewer", before: int = 2000, after: int = 400, timeout: float = 30.0) -> None:
    """A stream of task facts for one agent type whose latency doubles; show the drift_detector's alert.

    The facts go straight to ``facts.tasks`` (as the facts builder writes them, keyed by tenant):
    a latency shift through real tasks would take as long as the tasks do. A second agent type
    runs unchanged beside it and raises nothing. Neither type is one the commands above use, so
    the alert's index counts these facts only.
    """
    import datetime as dt
    import json
    import time

    from confluent_kafka import Producer

    from connectors.kafka_config import confluent_config
    from connectors.redis_store import redis_client
    from streams.drift_latest import read_latest

    rng = random.Random(3)
    start = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=before + after)
    producer = Producer({**confluent_config(settings), "partitioner": "murmur2_random", "linger.ms": 10})
    for i in range(before + after):
        for kind in (agent_type, other):
            slow = 2.0 if kind == agent_type and i >= before else 1.0
            fact = {
                "tenant": tenant, "agent_id": f"{kind}-demo", "agent_type": kind, "region": "eu-west-1", "task_id": f"drift-demo-{kind}-{i}",
                "outcome": "failed" if rng.random() < 0.05 else "completed", "response_time_ms": round(rng.lognormvariate(6.5, 0.4) * slow),
                "cost": round(rng.lognormvariate(-3.5, 0.8), 6), "event_time": (start + dt.timedelta(seconds=i)).isoformat(), "event_id": f"drift-demo-{kind}-{i}",
            }
            producer.produce("facts.tasks", json.dumps(fact).encode(), tenant.encode())
        producer.poll(0)
    producer.flush(30)
    console.print(f"{2 * (before + after):,} task facts of {tenant}: {agent_type} answers 2x slower from its task {before:,}; {other} unchanged")
    r = redis_client(settings)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        latest = read_latest(r, tenant)
        alert = latest.get(agent_type, {}).get("response_time")
        if alert is not None:
            b, a = alert["before"], alert["after"]
            console.print(
                f"[bold]DriftDetected[/] {tenant}/{agent_type} response_time by {alert['detector']} at task {alert['index']:,} "
                f"({alert['index'] - before} tasks after the shift): mean {b['mean']:,.0f} ms over {b['count']} before, {a['mean']:,.0f} ms over {a['count']} after"
            )
            others = sorted(t for t, metrics in latest.items() if t != agent_type and set(metrics) - {"anomaly"})
            console.print(f"other agent types with a drift alert: {', '.join(others) or 'none'} (Redis drift:{{{tenant}}}:*, alerts.drift, `agentstream drift list` via the sink)")
            return
        time.sleep(0.3)
    console.print(f"[yellow]no drift alert for {tenant}/{agent_type} after {timeout:.0f}s[/]")


def _report(tally: Tally, tenants: list[str]) -> None:
    table = Table("tenant", "accepted", "rejected (code: count)", title="command outcomes")
    for tenant in tenants:
        codes = ", ".join(f"{code}: {n}" for (t, code), n in sorted(tally.rejected.items()) if t == tenant)
        table.add_row(tenant, str(tally.accepted[tenant]), codes or "-")
    console.print(table)
    events = Table("event type", "appended", title="events.platform (the event store)")
    for kind, n in sorted(tally.events.items()):
        events.add_row(kind, str(n))
    console.print(events)
    console.print(f"dead letters: {tally.dead_letters} (topic deadletter.commands, with the reason in headers)")


def _read_side(settings: Settings, tenants: list[str], tally: Tally, timeout: float = 60.0) -> None:
    """The agent summary of one agent (Redis) and the task cube per tenant (ClickHouse)."""
    import time

    from connectors.redis_store import redis_client
    from sinks.query_client import QueryClient
    from sinks.query_errors import QueryError, QueryUnavailable
    from streams.queries import get_agent_summary

    r = redis_client(settings)
    agent = f"{tenants[0]}-agent-001"
    deadline = time.monotonic() + timeout
    summary = get_agent_summary(r, tenants[0], agent)
    while (summary is None or summary.tasks_completed + summary.tasks_failed < 3) and time.monotonic() < deadline:
        time.sleep(0.5)
        summary = get_agent_summary(r, tenants[0], agent)
    if summary is not None:
        console.print(f"agent summary (Redis read model) of {agent}: status={summary.status}, tasks completed={summary.tasks_completed}, failed={summary.tasks_failed}, cost={summary.total_cost:.4f}")
    finished = tally.events["TaskCompleted"] + tally.events["TaskFailed"]
    client = QueryClient(settings)
    quoted = ", ".join(f"'{t}'" for t in tenants)  # generated above, not user input
    try:
        while time.monotonic() < deadline:
            loaded = int(client.sql(f"SELECT count() AS n FROM agentstream.task_facts WHERE tenant IN ({quoted})")["n"][0])
            if loaded >= finished:
                break
            time.sleep(0.5)
        frame = client.cube("task_cube", ["task_count", "success_rate", "response_time_p95", "cost"], ["tenant"], granularity="day")
    except (QueryError, QueryUnavailable) as exc:
        console.print(f"[yellow]cube query failed[/]: {exc}")
        return
    table = Table("tenant", "tasks", "success rate", "p95 response (ms)", "cost", title=f"task_cube (ClickHouse; {loaded} of {finished} task facts loaded)")
    for row in frame[frame["tenant"].isin(tenants)].itertuples(index=False):
        table.add_row(row.tenant, str(row.task_count), f"{row.success_rate:.1%}", f"{row.response_time_p95:.1f}", f"{row.cost:.4f}")
    console.print(table)
    console.print("query it yourself: agentstream cube query task_cube --measures task_count,cost --dimensions tenant,time --granularity hour (while `agentstream sink` runs)")
    _event_store_read(settings, client, tenants[0], agent)


def _event_store_read(settings: Settings, client: QueryClient, tenant: str, agent: str) -> None:
    """One stream read through the event store (archive in ClickHouse + Kafka tail), and the archive's size."""
    from sinks.query_errors import QueryError, QueryUnavailable
    from streams.event_store import EventStore

    store = EventStore(settings)
    events = asyncio.run(store.get_events(tenant, f"agent-{agent}"))
    try:
        archived = int(client.sql("SELECT count() AS n FROM agentstream.event_archive")["n"][0])
    except (QueryError, QueryUnavailable) as exc:
        console.print(f"[yellow]archive query failed[/]: {exc}")
        return
    console.print(
        f"event store: {len(events)} events of stream agent-{agent} (versions 1..{events[-1].meta.version if events else 0}) read via {store.last_read}; "
        f"the ClickHouse events archive holds {archived} events (agentstream sql \"SELECT event_type, count() FROM agentstream.event_archive GROUP BY event_type\")"
    )


def _foreign_read(settings: Settings, tenant: str) -> None:
    """The tenant's first event read as a tool that knows nothing of agentstream reads it: the raw
    record from Kafka, its schema id, and confluent-kafka's ``AvroDeserializer`` with the registry."""
    from aiokafka import AIOKafkaConsumer, TopicPartition
    from confluent_kafka.schema_registry.avro import AvroDeserializer
    from confluent_kafka.serialization import MessageField, SerializationContext

    from connectors.kafka_config import aiokafka_config
    from connectors.kafka_topics import topic_partitions
    from schemas.wire import registry_client

    async def first_record():  # type: ignore[no-untyped-def]
        consumer = AIOKafkaConsumer(**aiokafka_config(settings), isolation_level="read_committed", enable_auto_commit=False)
        await consumer.start()
        try:
            tps = [TopicPartition("events.platform", p) for p in await topic_partitions(consumer, "events.platform")]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            while True:
                batch = await asyncio.wait_for(consumer.getmany(timeout_ms=1000), 30)
                for records in batch.values():
                    for record in records:
                        if record.key == tenant.encode():
                            return record
        finally:
            await consumer.stop()

    try:
        record = asyncio.run(first_record())
    except Exception as exc:  # noqa: BLE001 (the demo reports, it does not fail here)
        console.print(f"[yellow]could not read an event back[/]: {exc}")
        return
    value = AvroDeserializer(registry_client(settings))(record.value, SerializationContext("events.platform", MessageField.VALUE))
    schema_id = int.from_bytes(record.value[1:5], "big")
    console.print(
        f"events.platform/{record.partition}@{record.offset} key={record.key.decode()} "
        f"magic={record.value[0]} schema id={schema_id} ({len(record.value)} bytes), as AvroDeserializer reads it:",
        highlight=False,
    )
    console.print_json(data=value, default=str)
    console.print(f"any Kafka tool with the registry URL ({settings.schema_registry_url}) reads the store the same way", highlight=False)


def demo(
    tenants: int = typer.Option(5, min=1, max=len(TENANTS), help="How many tenants."),
    agents: int = typer.Option(20, min=1, help="Agents per tenant."),
    keep: bool = typer.Option(False, "--keep", help="Leave the stack running afterwards."),
    ready_timeout: float = typer.Option(120.0, help="Seconds to wait for the worker to answer the first command."),
    burst: int = typer.Option(20_000, min=0, help="ConfigureAgent commands sent as fast as possible at the end, to show the rate (0: none)."),
) -> None:
    """Run the whole pipeline locally: stack up, topology apply, a worker, a burst of commands, a summary."""
    from connectors.kafka_admin import AdminError, apply
    from connectors.local_stack import LocalStack, StackError
    from schemas.messages import new_id
    from streams.supervisor import WorkerProcess
    from schemas.topology import TopologyError, load_topology

    settings = get_settings()
    stack = LocalStack(settings)
    console.rule("[bold]1. local stack")
    try:
        started = stack.up(echo=console.print)
    except StackError as exc:
        fail(str(exc))
    worker = sink = None
    try:
        console.rule("[bold]2. topology")
        try:
            apply(load_topology(settings.topology_path), settings, echo=lambda line: console.print(f"  {line}"))
        except (AdminError, TopologyError) as exc:
            fail(str(exc))
        console.print("topics match topology.yaml")
        console.rule("[bold]3. worker and ClickHouse sink")
        worker = WorkerProcess(settings.data_dir / "logs" / "demo-worker.log").start()
        console.print(f"worker pid {worker.pid}, log {worker.log_file}")
        sink = WorkerProcess(settings.data_dir / "logs" / "demo-sink.log", args=["sink", "--max-delay", "0.5"]).start()
        console.print(f"sink pid {sink.pid}, log {sink.log_file} (embedded ClickHouse at {settings.clickhouse_url})")
        console.rule("[bold]4. commands")
        run = new_id()[:4]  # fresh tenants each run: the event store keeps the last run's
        names = [f"{name}-{run}" for name in TENANTS[:tenants]]
        try:
            tally = asyncio.run(_run(settings, names, agents, ready_timeout))
        except TimeoutError as exc:
            fail(f"{exc}\n--- worker log ---\n{worker.log_tail()}")
        console.rule("[bold]5. what happened")
        _report(tally, names)
        console.rule("[bold]6. read models and cubes")
        _read_side(settings, names, tally)
        console.rule("[bold]7. drift detection")
        _drift(settings, names[0])
        console.rule("[bold]8. the store, read by a tool that knows nothing of agentstream")
        _foreign_read(settings, names[0])
        if burst:
            console.rule("[bold]9. throughput")
            _burst(settings, names, agents, burst)
    finally:
        for process, name in ((worker, "worker"), (sink, "sink")):
            if process is not None:
                process.stop()
                console.print(f"{name} stopped")
        if started and not keep:
            stack.down(echo=console.print)
