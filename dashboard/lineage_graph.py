"""The lineage DAG, built from catalog records as a :class:`~dashboard.graph.Graph`.

Readability rules, for 50+ nightly runs:

* each expanded pipeline run is one box (a DOT cluster) holding its stages and what they wrote;
  content-addressed artifacts shared between nights appear once, with edges crossing boxes;
* the source files a stage read collapse into one "N source files" node;
* older runs collapse into one box with a node per stage and per artifact kind, counted;
* serving is summarised per model: registry versions, deployments, then completions and feedback
  as counts, never one node per request.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Any

from dashboard.graph import Graph, Node
from dashboard.mlflow_reads import VersionInfo
from dashboard.records import ArtifactInfo, Collapsed, LineageSlice, RunInfo, Trace, Usage

SERVING_STAGES = ("registry", "serving")
STATUS_FILL = {"completed": "#e6f4ea", "failed": "#fce8e6", "running": "#fef7e0"}
STATUS_MARK = {"completed": "✓", "failed": "✗", "running": "…"}
KIND_FILL = {
    "source": "#e8f0fe",
    "corpus": "#e8f0fe",
    "tokenizer": "#f3e8fd",
    "tokens": "#f3e8fd",
    "model": "#feefc3",
    "reward_model": "#feefc3",
    "preferences": "#e0f2f1",
    "eval_report": "#fde7f3",
}


def duration(seconds: float | None) -> str:
    """``4m 10s`` style durations; ``running`` while unknown."""
    if seconds is None:
        return "running"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, sec = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m {sec:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"


def when(ts: datetime) -> str:
    """A compact UTC timestamp."""
    return ts.strftime("%Y-%m-%d %H:%M")


def run_node(run: RunInfo, cluster: str | None) -> Node:
    mark = STATUS_MARK.get(run.status, "?")
    return Node(
        id=f"r:{run.id}",
        label=f"{mark} {run.stage}\n{duration(run.duration_s)}",
        kind="run",
        cluster=cluster,
        status=run.status,
        ref=run.id,
        fill=STATUS_FILL.get(run.status, "#ffffff"),
        shape="box",
    )


def artifact_node(a: ArtifactInfo, cluster: str | None) -> Node:
    return Node(
        id=f"a:{a.id}",
        label=f"{a.kind}\n{a.short}" + ("\n(deleted by gc)" if a.deleted_at else ""),
        kind="artifact",
        cluster=cluster,
        ref=a.id,
        fill=KIND_FILL.get(a.kind, "#f1f3f4"),
        shape="note",
    )


def sources_node(ids: list[int], artifacts: dict[int, ArtifactInfo]) -> Node:
    ids = sorted(ids)
    key = hashlib.sha256(",".join(map(str, ids)).encode()).hexdigest()[:12]
    if len(ids) == 1:
        a = artifacts[ids[0]]
        name = str(a.meta.get("source") or a.uri).rstrip("/").rsplit("/", 1)[-1]
        label = f"source\n{name[:28]}"
    else:
        label = _plural(len(ids), "source file")
    return Node(
        id=f"s:{key}", label=label, kind="sources", ref=tuple(ids), fill=KIND_FILL["source"], shape="cylinder"
    )


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _usage_nodes(g: Graph, model_id: int, usage: Usage | None, parent: str) -> None:
    if usage is None or usage.completions == 0 and usage.feedback == 0:
        return
    c = g.add(
        Node(
            f"c:{model_id}",
            _plural(usage.completions, "completion"),
            "completions",
            ref=model_id,
            fill="#f1f3f4",
            shape="box3d",
        )
    )
    g.link(parent, c.id)
    if usage.feedback:
        detail = f"{usage.preferences} prefs · {usage.ratings} ratings"
        if usage.unsafe:
            detail += f"\n{usage.unsafe} unsafe"
        f = g.add(
            Node(
                f"f:{model_id}",
                f"{usage.feedback} feedback\n{detail}",
                "feedback",
                ref=model_id,
                fill="#fce8e6" if usage.unsafe else "#e6f4ea",
                shape="ellipse",
            )
        )
        g.link(c.id, f.id)


def _serving(
    g: Graph, sl: LineageSlice, versions: list[VersionInfo], show_registry: bool, show_serving: bool
) -> None:
    by_sha = {a.sha256: a for a in sl.artifacts.values() if a.kind == "model"}
    version_node: dict[str, str] = {}
    last_hop: dict[int, str] = {}  # model artifact id -> the node its completions hang off
    if show_registry:
        for v in sorted(versions, key=lambda v: int(v.version) if v.version.isdigit() else 0):
            model = by_sha.get(v.artifact_sha256 or "")
            if model is None or f"a:{model.id}" not in g.nodes:
                continue
            aliases = " ".join(f"@{a}" for a in v.aliases)
            fill = "#fbbc04" if "champion" in v.aliases else "#fff8e1" if v.aliases else "#ffffff"
            n = g.add(
                Node(
                    f"v:{v.version}",
                    f"v{v.version} {aliases}".strip(),
                    "version",
                    ref=v.version,
                    fill=fill,
                    shape="tab",
                )
            )
            g.link(f"a:{model.id}", n.id)
            version_node[v.version] = n.id
            last_hop[model.id] = n.id
    if not show_serving:
        return
    for d in sl.deployments:
        if f"a:{d.model_artifact_id}" not in g.nodes:
            continue
        label = f"deployment #{d.id}\n{d.status}" + (f" @{d.alias}" if d.alias else "")
        fill = "#e6f4ea" if d.status == "active" else "#f1f3f4"
        n = g.add(Node(f"d:{d.id}", label, "deployment", ref=d.id, fill=fill, shape="component"))
        g.link(version_node.get(d.registry_version or "", f"a:{d.model_artifact_id}"), n.id)
        last_hop[d.model_artifact_id] = n.id
    for model_id, use in sl.usage.items():
        if f"a:{model_id}" in g.nodes:
            _usage_nodes(g, model_id, use, last_hop.get(model_id, f"a:{model_id}"))


def build_graph(
    sl: LineageSlice,
    versions: list[VersionInfo],
    *,
    stages: set[str] | None = None,
    older: Collapsed | None = None,
) -> Graph:
    """The nightly lineage: expanded pipeline runs, serving summaries, and older runs collapsed.

    Args:
        sl: The expanded pipeline runs and what they touched.
        versions: Registry versions (linked to model artifacts by content hash).
        stages: Stage names to show (plus ``registry`` and ``serving``); None shows everything.
        older: Older runs to draw as one collapsed box.
    """
    g = Graph()
    shown = (lambda s: True) if stages is None else (lambda s: s in stages)
    for p in sl.pipelines:
        g.clusters[p.id] = (
            f"{p.stage} · {when(p.started_at)} · {p.status} · {duration(p.duration_s)}",
            p.status,
        )
    runs = {r.id: r for r in sl.stages if shown(r.stage)}
    for r in runs.values():
        g.add(run_node(r, r.parent_id))
    # An artifact sits in the box of the run that wrote it; one written by several expanded runs
    # (content addressing: the same corpus two nights in a row) sits outside every box.
    writers: dict[int, set[str | None]] = {}
    for e in sl.edges:
        if e.run_id in runs and e.direction == "wrote":
            writers.setdefault(e.artifact_id, set()).add(runs[e.run_id].parent_id)
    sources: dict[str, list[int]] = {}
    for e in sl.edges:
        if e.run_id not in runs:
            continue
        a = sl.artifacts[e.artifact_id]
        if a.kind == "source":
            sources.setdefault(e.run_id, []).append(a.id)
            continue
        boxes = writers.get(a.id, set())
        node = g.add(artifact_node(a, next(iter(boxes)) if len(boxes) == 1 else None))
        if e.direction == "wrote":
            g.link(f"r:{e.run_id}", node.id)
        else:
            g.link(node.id, f"r:{e.run_id}")
    for run_id, ids in sources.items():
        g.link(g.add(sources_node(ids, sl.artifacts)).id, f"r:{run_id}")
    _serving(g, sl, versions, shown("registry"), shown("serving"))
    if older is not None and older.pipelines:
        _collapsed(g, older, shown)
    return g


def _collapsed(g: Graph, older: Collapsed, shown: Any) -> None:
    first, last = older.pipelines[-1].started_at, older.pipelines[0].started_at
    failed = sum(1 for p in older.pipelines if p.status == "failed")
    label = f"{_plural(len(older.pipelines), 'older run')} · {first:%Y-%m-%d} – {last:%Y-%m-%d}"
    g.clusters["older"] = (
        label + (f" · {failed} failed" if failed else ""),
        "failed" if failed else "completed",
    )
    totals: dict[str, dict[str, int]] = {}
    for (stage, status), n in older.stage_status.items():
        totals.setdefault(stage, {})[status] = n
    for stage, by_status in totals.items():
        if not shown(stage):
            continue
        marks = " ".join(f"{n}{STATUS_MARK.get(s, '?')}" for s, n in sorted(by_status.items()))
        fill = STATUS_FILL["failed"] if by_status.get("failed") else STATUS_FILL["completed"]
        g.add(
            Node(
                f"os:{stage}",
                f"{stage} ×{sum(by_status.values())}\n{marks}",
                "older-run",
                cluster="older",
                ref=stage,
                fill=fill,
            )
        )
    for (stage, kind, direction), _n in older.flows.items():
        if f"os:{stage}" not in g.nodes:
            continue
        node = g.add(
            Node(
                f"ok:{kind}",
                f"{kind} ×{older.kind_counts.get(kind, 0)}",
                "older-artifact",
                cluster="older",
                ref=kind,
                fill=KIND_FILL.get(kind, "#f1f3f4"),
                shape="note",
            )
        )
        if direction == "wrote":
            g.link(f"os:{stage}", node.id)
        else:
            g.link(node.id, f"os:{stage}")


def trace_graph(t: Trace) -> Graph:
    """One completion back to its sources: completion ← model ← runs ← artifacts ← source files."""
    g = Graph()
    artifacts = {a.id: a for a in [t.model, *t.artifacts]}
    for r in t.runs:
        g.add(run_node(r, None))
    for a in artifacts.values():
        if a.kind != "source":
            g.add(artifact_node(a, None))
    sources: dict[str, list[int]] = {}
    for e in t.edges:
        a = artifacts.get(e.artifact_id)
        if a is None:
            continue
        if a.kind == "source":
            sources.setdefault(e.run_id, []).append(a.id)
        elif e.direction == "wrote":
            g.link(f"r:{e.run_id}", f"a:{a.id}")
        else:
            g.link(f"a:{a.id}", f"r:{e.run_id}")
    for run_id, ids in sources.items():
        g.link(g.add(sources_node(ids, artifacts)).id, f"r:{run_id}")
    hop = f"a:{t.model.id}"
    if t.deployment is not None:
        d = t.deployment
        g.add(Node(f"d:{d.id}", f"deployment #{d.id}\n{d.status}", "deployment", ref=d.id, shape="component"))
        g.link(hop, f"d:{d.id}")
        hop = f"d:{d.id}"
    c = t.completion
    g.add(
        Node(f"cmp:{c.id}", f"completion\n{c.id[:24]}", "completion", ref=c.id, fill="#fbbc04", shape="box3d")
    )
    g.link(hop, f"cmp:{c.id}")
    return g
