"""A chaos run of the whole pipeline and its audit against a reference model.

Two workers and the ClickHouse sink run while a client sends several thousand commands over a
few tenants: client retries (the same command id sent again), stale ``expected_version``s and
poison messages (undecodable bytes, an unknown schema, a missing envelope). Workers and the sink
are SIGKILLed at random moments (some right after a restart, while their groups rebalance) and
started again. Then everything is read back ``read_committed`` and compared with what the real
``CommandProcessor`` decides over an in-memory table, fed each tenant's commands in the order of
the partition that decided them (the reference model):

- every command message has an answer, and every answer is the reference model's decision (a
  retried id is answered once per message, each time with the first decision);
- every accepted command's events appear exactly once, a rejected one has none, and each
  stream's versions are exactly 1..n;
- ``facts.tasks`` holds one fact per finished task; ClickHouse's facts and every roll-up of the
  cube equal the totals computed from the events;
- the Redis read models equal a fold of the events;
- no process exits on its own (only the kills stop them).

``run_chaos`` is used by ``tests/integration/test_chaos.py`` (sized for the suite) and can be
run larger by setting ``AGENTSTREAM_CHAOS_COMMANDS`` / ``AGENTSTREAM_CHAOS_KILLS``.
"""

from __future__ import annotations

import asyncio
import json
import random
import threading
import time
import urllib.request
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from aiokafka import AIOKafkaProducer
from confluent_kafka import Producer

from connectors.kafka_config import aiokafka_config, confluent_config
from connectors.redis_store import redis_client
from schemas import default_registry
from schemas.messages import CommandAccepted, CommandMeta, EventMeta, parse_result
from schemas.settings import Settings
from schemas.topology import load_topology
from schemas.topics import COMMANDS, DEADLETTER, EVENTS, FACTS, RESULTS
from streams import projections as pj
from streams.command_processor import CommandProcessor
from streams.handlers import REPARTITION
from streams.queries import live_generation
from streams.runtime import KeyPartitioner
from streams.supervisor import WorkerProcess
from tests.helpers import headers_of, read_topic, tenant

Partitioner = Literal["murmur2", "librdkafka-default"]

#: The agents the reference model covers. The sagas send commands of their own (audited by
#: tests/integration/test_sagas.py), which a model fed only the client's commands cannot predict.
AUDITED_AGENTS = "command_handler,projector,facts_builder"


@dataclass
class Sent:
    """One command message as the client sent it (a retry is a second Sent with the same id)."""

    tenant: str
    kind: str
    command_id: str | None
    poison: str | None = None


@dataclass
class ChaosReport:
    """What a run did and found (problems empty = the audit passed)."""

    seed: int
    partitioner: Partitioner
    commands: int = 0
    messages: int = 0
    kills: list[str] = field(default_factory=list)
    accepted: int = 0
    rejected: int = 0
    events: int = 0
    facts: int = 0
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)


# --- the workload -------------------------------------------------------------------------------


def _workload(rng: random.Random, tenants: list[str], commands: int) -> list[tuple[str, str, dict, int | None]]:
    """(tenant, type, payload, expected_version or None): a plausible, order-sensitive mix."""
    out: list[tuple[str, str, dict, int | None]] = [(t, "CreateTenant", {"name": t.upper(), "plan": "pro"}, None) for t in tenants]
    agents: dict[str, list[str]] = {t: [] for t in tenants}
    tasks: dict[str, list[str]] = {t: [] for t in tenants}
    versions: dict[tuple[str, str], int] = defaultdict(int)
    while len(out) < commands:
        t = rng.choice(tenants)
        roll = rng.random()
        if roll < 0.08 or not agents[t]:
            agent = f"a{len(agents[t]) + (rng.random() < 0.1)}"  # now and then an id that exists already
            agents[t].append(agent)
            out.append((t, "CreateAgent", {"agent_id": agent, "name": agent, "agent_type": rng.choice(["llm", "retriever", "planner"]), "region": rng.choice(["eu-west-1", "us-east-1"])}, None))
        elif roll < 0.16:
            out.append((t, "StartAgent", {"agent_id": rng.choice(agents[t])}, None))
        elif roll < 0.19:
            out.append((t, "StopAgent", {"agent_id": rng.choice(agents[t])}, None))
        elif roll < 0.35:
            agent = rng.choice(agents[t])
            guess = max(0, versions[(t, agent)] + rng.choice([0, 0, 1, 2, -1]))  # often right, sometimes stale
            versions[(t, agent)] += 1
            out.append((t, "ConfigureAgent", {"agent_id": agent, "config": {"step": str(len(out))}}, guess if rng.random() < 0.5 else None))
        elif roll < 0.65:
            task = f"k{len(tasks[t])}"
            tasks[t].append(task)
            out.append((t, "AssignTask", {"task_id": task, "agent_id": rng.choice(agents[t]), "task_type": "summarise"}, None))
        elif tasks[t]:
            task = rng.choice(tasks[t][-20:])
            if rng.random() < 0.75:
                out.append((t, "CompleteTask", {"task_id": task, "cost": round(rng.uniform(0.01, 2.0), 2)}, None))
            else:
                out.append((t, "FailTask", {"task_id": task, "error": "timeout", "cost": round(rng.uniform(0.0, 0.5), 2)}, None))
    return out


def _messages(rng: random.Random, workload: list[tuple[str, str, dict, int | None]]) -> list[tuple[Sent, bytes, bytes, list[tuple[str, bytes]]]]:
    """The records to produce: every command, some sent twice, and poison among them."""
    registry = default_registry()
    out = []
    for n, (t, kind, data, expected) in enumerate(workload):
        cid = f"{t}-{n}"
        value, schema_headers = registry.encode(kind, data)
        headers = schema_headers + CommandMeta(command_id=cid, tenant_id=t, expected_version=expected).to_headers()
        sent = Sent(t, kind, cid)
        out.append((sent, t.encode(), value, headers))
        if rng.random() < 0.03:  # a client retry (two identical messages, up to 5 others between them)
            out.insert(len(out) - rng.randint(0, min(5, len(out) - 1)), (Sent(t, kind, cid), t.encode(), value, headers))
        if rng.random() < 0.01:
            poison = rng.choice(["undecodable", "unknown-schema", "no-envelope"])
            bad_id = f"{t}-poison-{n}"
            bad_meta = CommandMeta(command_id=bad_id, tenant_id=t).to_headers()
            if poison == "undecodable":  # a real schema id, then bytes that are no such record
                out.append((Sent(t, "?", bad_id, poison), t.encode(), value[:5] + b"\xff\xff\xff\xff", schema_headers + bad_meta))
            elif poison == "unknown-schema":  # the old header format naming a schema nobody has
                out.append((Sent(t, "?", bad_id, poison), t.encode(), value, [("agentstream.schema", b"NoSuchCommand"), ("agentstream.schema_version", b"1")] + bad_meta))
            else:
                out.append((Sent(t, "?", None, poison), t.encode(), value, schema_headers))
    return out


async def _produce_murmur2(settings: Settings, messages: list, rate: float) -> None:
    producer = AIOKafkaProducer(**aiokafka_config(settings), acks="all", enable_idempotence=True, linger_ms=2)
    await producer.start()
    try:
        started = time.monotonic()
        for n, (_, key, value, headers) in enumerate(messages):
            await producer.send(COMMANDS, key=key, value=value, headers=headers)
            ahead = n / rate - (time.monotonic() - started)
            if ahead > 0:
                await asyncio.sleep(ahead)
        await producer.flush()
    finally:
        await producer.stop()


def _produce_librdkafka_default(settings: Settings, messages: list, rate: float) -> None:
    """Through confluent-kafka with its default partitioner (CRC32 of the key), as a user's own client would."""
    producer = Producer({**confluent_config(settings), "enable.idempotence": True, "linger.ms": 2})
    started = time.monotonic()
    for n, (_, key, value, headers) in enumerate(messages):
        producer.produce(COMMANDS, value, key, headers=headers)
        producer.poll(0)
        ahead = n / rate - (time.monotonic() - started)
        if ahead > 0:
            time.sleep(ahead)
    assert producer.flush(60) == 0


# --- the run ------------------------------------------------------------------------------------


class _Fleet:
    """The two workers and the sink of a run, each restartable under the same identity."""

    def __init__(self, settings: Settings, tmp: Path) -> None:
        self.tmp = tmp
        self.specs = {
            "worker-1": ({"AGENTSTREAM_WEB_PORT": str(settings.web_port + 21), "AGENTSTREAM_WORKER_ID": "chaos-1"}, ["worker", "--agents", AUDITED_AGENTS]),
            "worker-2": ({"AGENTSTREAM_WEB_PORT": str(settings.web_port + 22), "AGENTSTREAM_WORKER_ID": "chaos-2"}, ["worker", "--agents", AUDITED_AGENTS]),
            "sink": ({"AGENTSTREAM_CLICKHOUSE_URL": f"chdb://{tmp / 'chdb'}"}, ["sink", "--max-delay", "0.5"]),
        }
        self.procs: dict[str, WorkerProcess] = {}

    def start(self, name: str) -> None:
        env, args = self.specs[name]
        self.procs[name] = WorkerProcess(self.tmp / f"{name}.log", env=env, args=args, restart=False).start()

    def kill(self, name: str) -> None:
        self.procs[name].kill()

    def exited_on_their_own(self) -> list[str]:
        return [f"{name} exited with {p.proc.returncode}" for name, p in self.procs.items() if p.proc is not None and p.proc.poll() is not None]

    def stop(self) -> None:
        for proc in self.procs.values():
            proc.stop()

    def logs(self) -> str:
        return "\n".join(f"--- {name}\n{p.log_tail(1500)}" for name, p in self.procs.items())


def run_chaos(settings: Settings, tmp: Path, seed: int, partitioner: Partitioner, commands: int = 2500, kills: int = 5, rate: float = 100.0) -> ChaosReport:
    """Run the scenario of the module docstring and audit it; the report lists every problem found."""
    rng = random.Random(seed)
    report = ChaosReport(seed, partitioner)
    started = time.monotonic()
    tenants = [tenant() for _ in range(6)]
    messages = _messages(rng, _workload(rng, tenants, commands))
    report.commands, report.messages = commands, len(messages)
    fleet = _Fleet(settings, tmp)
    for name in fleet.specs:
        fleet.start(name)
    try:
        time.sleep(8)  # let both workers join and share the partitions before the load starts
        produce = (lambda: asyncio.run(_produce_murmur2(settings, messages, rate))) if partitioner == "murmur2" else (lambda: _produce_librdkafka_default(settings, messages, rate))
        loader = threading.Thread(target=produce, daemon=True)
        loader.start()
        load_s = len(messages) / rate
        last_restart = 0.0
        for n in range(kills):
            # half of the kills land soon after the previous restart, while groups rebalance
            time.sleep(rng.uniform(0.5, 2.5) if n % 2 and last_restart else rng.uniform(1.0, load_s / kills))
            victim = rng.choice(["worker-1", "worker-2", "worker-1", "worker-2", "sink"])
            fleet.kill(victim)
            report.kills.append(f"{victim}@{time.monotonic() - started:.1f}s")
            time.sleep(rng.uniform(0.5, 3.0))
            fleet.start(victim)
            last_restart = time.monotonic()
        loader.join()
        answered = _wait_for_answers(settings, {s.command_id for s, *_ in messages if s.command_id}, timeout=180)
        report.problems += fleet.exited_on_their_own()
        report.problems += _audit(settings, tenants, messages, answered, report)
        report.problems += _audit_clickhouse(settings, tenants, report)
    finally:
        report.problems += fleet.exited_on_their_own() if not report.problems else []
        logs = fleet.logs() if report.problems else ""
        fleet.stop()
    report.seconds = round(time.monotonic() - started, 1)
    if report.problems and logs:
        report.problems.append(logs)
    return report


def _wait_for_answers(settings: Settings, ids: set[str], timeout: float) -> dict[str, list]:
    deadline = time.monotonic() + timeout
    while True:
        found: dict[str, list] = defaultdict(list)
        for record in read_topic(settings, RESULTS):
            cid = record.key.decode() if record.key else ""
            if cid in ids:
                found[cid].append(parse_result(record.value))
        if set(found) >= ids or time.monotonic() > deadline:
            return found
        time.sleep(2)


# --- the audit ----------------------------------------------------------------------------------


def _decision(outcome: Any) -> tuple:
    if isinstance(outcome, CommandAccepted):
        return ("accepted", outcome.stream_id, outcome.new_version, tuple(e.type for e in outcome.events))
    return ("rejected", outcome.code)


def _reference(settings: Settings, tenants: list[str]) -> tuple[dict[str, list[tuple]], dict[str, tuple[str, ...]], int]:
    """Per command id: the reference decision of each of its messages; per accepted id its event
    types; and how many messages had no envelope. Fed in the deciding partition's order."""
    owner = KeyPartitioner(load_topology(settings.topology_path).topic(COMMANDS).partitions)
    wanted = set(tenants)
    direct: dict[str, list] = defaultdict(list)
    forwarded: dict[str, list] = defaultdict(list)
    for topic, into in ((COMMANDS, direct), (REPARTITION, forwarded)):
        for record in read_topic(settings, topic):
            t = record.key.decode() if record.key else None
            if t in wanted and (topic == REPARTITION or owner(record.key) == record.partition):
                into[t].append(record)
    plans = load_topology(settings.topology_path).quotas if settings.quotas_enabled else None
    processor = CommandProcessor(default_registry(), max_bytes=settings.max_command_bytes, plans=plans)
    decisions: dict[str, list[tuple]] = defaultdict(list)
    event_types: dict[str, tuple[str, ...]] = {}
    no_envelope = 0
    for t in tenants:
        table: dict[str, Any] = {}
        for record in forwarded[t] or direct[t]:
            outcome = processor.process(record.key, record.value, list(record.headers), table.get)
            if outcome.result is None:
                no_envelope += 1
                continue
            decisions[outcome.result.command_id].append(_decision(outcome.result))
            if outcome.events and not outcome.replayed:
                event_types[outcome.result.command_id] = tuple(_decision(outcome.result)[3])
            if outcome.state_key is not None:
                table[outcome.state_key] = outcome.new_state
            table.update(outcome.extra_rows)  # the tenant's quota row, with quotas on
    return decisions, event_types, no_envelope


def _audit(settings: Settings, tenants: list[str], messages: list, answered: dict[str, list], report: ChaosReport) -> list[str]:
    problems: list[str] = []
    wanted = set(tenants)
    sent = Counter(s.command_id for s, *_ in messages if s.command_id)
    reference, event_types, no_envelope = _reference(settings, tenants)
    # Answers: one per message, each the reference decision.
    for cid, count in sent.items():
        got = [_decision(o) for o in answered.get(cid, [])]
        want = reference.get(cid, [])
        if len(want) != count:
            problems.append(f"{cid}: sent {count}x but the commands topic holds it {len(want)}x")
        if len(got) != count:
            problems.append(f"{cid}: {count} message(s), {len(got)} answer(s): {got}")
        elif got != want:
            problems.append(f"{cid}: answered {got}, the reference model decides {want}")
    report.accepted = sum(1 for d in reference.values() if d and d[0][0] == "accepted")
    report.rejected = sum(1 for d in reference.values() if d and d[0][0] == "rejected")
    # Events: exactly the accepted commands', once, versions 1..n per stream.
    per_stream: dict[tuple[str, str], list[int]] = defaultdict(list)
    per_command: dict[str, list[str]] = defaultdict(list)
    registry = default_registry()
    folded_agents: dict[tuple[str, str], Any] = {}
    folded_tenants: dict[str, Any] = {}
    finished: Counter = Counter()
    for record in read_topic(settings, EVENTS):
        h = headers_of(record)
        t = h.get("agentstream.tenant_id")
        if t not in wanted:
            continue
        report.events += 1
        per_stream[(t, h["agentstream.stream_id"])].append(int(h["agentstream.version"]))
        per_command[h["agentstream.command_id"]].append(h["agentstream.schema"])
        event_type, payload = registry.decode(record.value, list(record.headers))
        meta = EventMeta.from_headers(list(record.headers))
        data = payload.model_dump(mode="json")
        if event_type in ("TaskCompleted", "TaskFailed"):
            finished[(t, data["task_id"])] += 1
        if event_type in pj.PROJECTED_EVENTS:
            ids = pj.agent_ids_of(event_type, data)
            agents, overview = pj.apply_to_agents({a: folded_agents.get((t, a)) for a in ids}, folded_tenants.get(t), event_type, data, meta)
            for agent_id, summary in agents.items():
                folded_agents[(t, agent_id)] = summary
            if overview is not None:
                folded_tenants[t] = overview
    for stream, versions in per_stream.items():
        if versions != list(range(1, len(versions) + 1)):
            problems.append(f"stream {stream}: versions {versions[:12]}... are not 1..n")
    for cid, types in per_command.items():
        if tuple(types) != event_types.get(cid):
            problems.append(f"{cid}: events {types} in the store, the reference model accepts {event_types.get(cid)}")
    problems += [f"{cid}: accepted by the reference model but has no events" for cid in sorted(set(event_types) - set(per_command))]
    # Facts: one per finished task (the facts builder may still be catching up after the last kill:
    # wait for it, bounded; a fact twice is a failure at once).
    deadline = time.monotonic() + 120
    while True:
        facts: Counter = Counter()
        for record in read_topic(settings, FACTS):
            fact = json.loads(record.value)
            if fact["tenant"] in wanted:
                facts[(fact["tenant"], fact["task_id"])] += 1
        if set(facts) >= set(finished) or any(n > 1 for n in facts.values()) or time.monotonic() > deadline:
            break
        time.sleep(2)
    report.facts = sum(facts.values())
    if facts != finished:
        problems.append(f"facts.tasks: {sum(facts.values())} facts for {sum(finished.values())} finished tasks; twice: {[k for k, n in facts.items() if n > 1][:5]}, missing: {sorted(set(finished) - set(facts))[:5]}")
    # Dead letters: every poison message is there.
    poison = Counter(s.poison for s, *_ in messages if s.poison)
    letters = Counter(headers_of(r).get("agentstream.dlq_reason") for r in read_topic(settings, DEADLETTER) if (r.key or b"").decode() in wanted)
    if letters["bad-envelope"] != poison["no-envelope"] or no_envelope != poison["no-envelope"]:
        problems.append(f"messages without an envelope: {poison['no-envelope']} sent, {letters['bad-envelope']} dead-lettered")
    if letters["undecodable"] < poison["undecodable"] or letters["unknown-schema"] < poison["unknown-schema"]:
        problems.append(f"poison {dict(poison)} but dead letters {dict(letters)}")
    # Read models: equal a fold of the events.
    problems += _audit_read_models(settings, folded_agents, folded_tenants)
    return problems


def _audit_read_models(settings: Settings, agents: dict, tenants: dict, timeout: float = 60) -> list[str]:
    r = redis_client(settings)
    deadline = time.monotonic() + timeout
    try:
        while True:
            gen = live_generation(r)
            diffs = []
            for (t, a), want in agents.items():
                got = pj.loads(r.get(pj.agent_key(gen, t, a))) if gen else None
                if got != json.loads(pj.dumps(want)):
                    diffs.append(f"agent {t}/{a}: Redis {got}, fold of the events {want}")
            for t, want in tenants.items():
                got = pj.loads(r.get(pj.tenant_key(gen, t))) if gen else None
                if got != json.loads(pj.dumps(want)):
                    diffs.append(f"tenant {t}: Redis {got}, fold of the events {want}")
            if not diffs or time.monotonic() > deadline:
                return diffs[:10]
            time.sleep(2)
    finally:
        r.close()


def _sql(port: int, sql: str) -> list[dict]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/sql", data=json.dumps({"sql": sql, "format": "json"}).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        body = json.loads(response.read())
    return [dict(zip(body["columns"], row)) for row in body["rows"]] if body.get("rows") and isinstance(body["rows"][0], list) else body.get("rows", [])


def _audit_clickhouse(settings: Settings, tenants: list[str], report: ChaosReport, timeout: float = 120) -> list[str]:
    """ClickHouse's facts and every roll-up of the cube equal the totals of the events."""
    registry = default_registry()
    want: dict[str, list] = defaultdict(lambda: [0, 0, 0.0])
    for record in read_topic(settings, EVENTS):
        h = headers_of(record)
        if h.get("agentstream.tenant_id") in tenants and h.get("agentstream.schema") in ("TaskCompleted", "TaskFailed"):
            _, payload = registry.decode(record.value, list(record.headers))
            row = want[h["agentstream.tenant_id"]]
            row[0] += 1
            row[1] += h["agentstream.schema"] == "TaskCompleted"
            row[2] += payload.cost
    names = ",".join(f"'{t}'" for t in sorted(tenants))
    queries = {
        "task_facts": f"SELECT tenant, count() AS n, countIf(outcome = 'completed') AS ok, sum(cost) AS cost FROM agentstream.task_facts WHERE tenant IN ({names}) GROUP BY tenant",
        **{
            f"task_cube_{grain}": f"SELECT tenant, countMerge(count_state) AS n, countIfMerge(success_state) AS ok, sumMerge(cost_state) AS cost FROM agentstream.task_cube_{grain} WHERE tenant IN ({names}) GROUP BY tenant"
            for grain in ("minute", "hour", "day")
        },
    }
    deadline = time.monotonic() + timeout
    while True:
        problems = []
        for table, sql in queries.items():
            try:
                got = {r["tenant"]: (int(r["n"]), int(r["ok"]), float(r["cost"])) for r in _sql(settings.sink_port, sql)}
            except OSError as exc:
                problems.append(f"{table}: the sink does not answer ({exc})")
                continue
            same = set(got) == set(want) and all(got[t][:2] == (n, ok) and abs(got[t][2] - cost) < 1e-6 for t, (n, ok, cost) in want.items())
            if not same:
                problems.append(f"{table}: {got} but the events say {dict(want)}")
        if not problems or time.monotonic() > deadline:
            return problems
        time.sleep(2)
