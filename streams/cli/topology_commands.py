"""``agentstream topology show|validate|diff|apply|graph``: the declared topology."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import typer
from rich.table import Table
from rich.tree import Tree

from streams.cli.console import console, fail
from schemas.settings import get_settings
from schemas.topology import Topology, TopologyError, load_topology, render_graph, validate as validate_topology

topology_cli = typer.Typer(help="Show, validate, diff, apply and draw topology.yaml.", no_args_is_help=True)

FileOption = typer.Option(None, "--file", "-f", help="Topology file (default: AGENTSTREAM_TOPOLOGY_PATH or ./topology.yaml).")


def _load(path: Path | None) -> Topology:
    try:
        return load_topology(path or get_settings().topology_path)
    except TopologyError as exc:
        fail(str(exc))


@topology_cli.command()
def show(file: Path | None = FileOption) -> None:
    """A tree of topics, tables, agents, sinks and cubes."""
    topology = _load(file)
    root = Tree("[bold]topology[/]")
    topics = root.add("topics")
    for t in topology.topics:
        node = topics.add(f"[cyan]{t.name}[/] partitions={t.partitions} retention_ms={t.retention_ms} cleanup={t.cleanup_policy} key={t.key}")
        if t.schemas:
            node.add("schemas: " + ", ".join(t.schemas))
    tables = root.add("tables")
    for table in topology.tables:
        tables.add(f"[magenta]{table.name}[/] key={table.key} partitions={topology.table_partitions(table.name)}")
    agents = root.add("agents")
    for agent in topology.agents:
        node = agents.add(f"[green]{agent.name}[/]")
        node.add("in: " + ", ".join(agent.inputs))
        if agent.outputs:
            node.add("out: " + ", ".join(agent.outputs))
        if agent.tables:
            node.add("tables: " + ", ".join(agent.tables))
    sinks = root.add("sinks")
    for sink in topology.sinks:
        sinks.add(f"[yellow]{sink.name}[/] ({sink.kind}) {', '.join(sink.inputs)} -> {sink.target}")
    cubes = root.add("cubes")
    for cube in topology.cubes:
        cubes.add(f"[blue]{cube.name}[/] from {cube.source}: dimensions {', '.join(cube.dimensions)}; measures {', '.join(cube.measures)}")
    if topology.drift is not None:
        drift = root.add(f"drift -> {topology.drift.alerts_topic}")
        for m in topology.drift.metrics:
            drift.add(f"[red]{m.metric}[/]: {m.detector} {m.params} transform={m.transform} standardize={m.standardize} warmup={m.warmup} cooldown={m.cooldown}")
        if topology.drift.anomaly is not None:
            a = topology.drift.anomaly
            drift.add(f"[red]anomaly[/]: {a.detector} {a.params} on {', '.join(f.metric for f in a.features)}; threshold={a.threshold} cooldown={a.cooldown}")
    console.print(root)


@topology_cli.command()
def validate(file: Path | None = FileOption) -> None:
    """Check the file against the code: schemas exist, agents match both ways, tables co-partitioned, drift detectors known to river."""
    from dataclasses import replace

    topology = _load(file)
    from streams.drift.catalog import check
    from streams.worker import code_view

    problems = validate_topology(topology, replace(code_view(), drift_checker=check))
    for problem in problems:
        console.print(f"[red]✗[/] {problem}", highlight=False)
    if problems:
        fail(f"{len(problems)} problem(s) in the topology")
    console.print(f"[green]✓[/] topology is valid: {len(topology.topics)} topics, {len(topology.agents)} agents, {len(topology.tables)} tables")


@topology_cli.command()
def diff(file: Path | None = FileOption) -> None:
    """Compare the declared topics with the live cluster (missing, extra, partitions, configs)."""
    from connectors.kafka_admin import AdminError, diff as diff_cluster

    topology = _load(file)
    try:
        drift = diff_cluster(topology, get_settings())
    except AdminError as exc:
        fail(str(exc))
    if not drift:
        console.print("[green]no drift[/]: the cluster matches the topology")
        return
    table = Table("topic", "drift", "declared", "cluster")
    for d in drift:
        table.add_row(d.topic, d.kind, d.expected, d.actual)
    console.print(table)
    raise typer.Exit(1)


@topology_cli.command()
def apply(file: Path | None = FileOption) -> None:
    """Create missing topics, add partitions and set configs (idempotent)."""
    from connectors.kafka_admin import AdminError, apply as apply_cluster

    topology = _load(file)
    try:
        actions = apply_cluster(topology, get_settings(), echo=lambda line: console.print(f"  {line}"))
    except AdminError as exc:
        fail(str(exc))
    console.print(f"[green]applied[/]: {len(actions)} change(s)" if actions else "[green]up to date[/]: nothing to change")


@topology_cli.command()
def graph(
    file: Path | None = FileOption,
    format: str = typer.Option("mermaid", "--format", help="mermaid or dot"),
) -> None:
    """Draw topics -> agents -> sinks as Mermaid or Graphviz dot."""
    if format not in ("mermaid", "dot"):
        fail(f"unknown format '{format}': use mermaid or dot", code=2)
    fmt: Literal["mermaid", "dot"] = "mermaid" if format == "mermaid" else "dot"
    typer.echo(render_graph(_load(file), fmt), nl=False)
