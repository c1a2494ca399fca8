"""A drawable graph (nodes, edges, clusters) and its Graphviz DOT text, for ``st.graphviz_chart``.

Knows nothing about lineage: :mod:`dashboard.lineage_graph` builds these graphs from catalog
records. :meth:`Graph.compacted` is the reading aid that folds minor nodes into a neighbour.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

SELECTED = "#c2185b"


@dataclass
class Node:
    """A drawable node; ``ref`` says what it stands for (a run id, artifact id, version, …)."""

    id: str
    label: str
    kind: str
    cluster: str | None = None
    status: str | None = None
    ref: Any = None
    fill: str = "#ffffff"
    shape: str = "box"


@dataclass
class Graph:
    """Nodes, edges and clusters (pipeline runs) of one lineage view."""

    nodes: dict[str, Node] = field(default_factory=dict)
    edges: dict[tuple[str, str], str] = field(default_factory=dict)
    clusters: dict[str, tuple[str, str]] = field(default_factory=dict)  # id -> (label, status)

    def add(self, node: Node) -> Node:
        return self.nodes.setdefault(node.id, node)

    def link(self, src: str, dst: str, style: str = "solid") -> None:
        if src in self.nodes and dst in self.nodes and src != dst:
            self.edges.setdefault((src, dst), style)

    def compacted(self, keep: str | None = None) -> Graph:
        """The same lineage in fewer ranks, for reading: some nodes fold into a neighbour's label.

        * an artifact with one writer whose readers are all runs folds into its writer
          (``→ model 9c23df8dba81``): it adds a rank and says little on its own;
        * a registry version folds into its model, and the completions and feedback counts into
          the deployment or model that served them.

        Shared artifacts (several writers), models the registry or serving hang off, deployments
        and ``keep`` (the selected node) stay nodes; edges of a folded node move to its host.
        """
        ins: dict[str, list[str]] = {}
        outs: dict[str, list[str]] = {}
        for src, dst in self.edges:
            outs.setdefault(src, []).append(dst)
            ins.setdefault(dst, []).append(src)
        host: dict[str, str] = {}
        for nid, node in self.nodes.items():
            parents = ins.get(nid, [])
            if nid == keep or len(parents) != 1:
                continue
            if node.kind == "artifact":
                if parents[0].startswith("r:") and all(d.startswith("r:") for d in outs.get(nid, [])):
                    host[nid] = parents[0]
            elif node.kind in ("version", "completions", "feedback"):
                host[nid] = parents[0]

        def root(nid: str) -> str:
            while nid in host:
                nid = host[nid]
            return nid

        g = Graph(clusters=dict(self.clusters))
        for nid, node in self.nodes.items():
            if nid in host:
                continue
            guests = [self.nodes[x] for x in self.nodes if x in host and root(x) == nid]
            if not guests:
                g.add(node)
                continue
            lines = [("→ " if x.kind == "artifact" else "") + x.label.replace("\n", " ") for x in guests]
            fill = next((x.fill for x in guests if x.kind == "version" and x.fill != "#ffffff"), node.fill)
            g.add(replace(node, label="\n".join([node.label, *lines]), fill=fill))
        for (src, dst), style in self.edges.items():
            g.link(root(src), root(dst), style)
        return g

    def to_dot(self, selected: str | None = None) -> str:
        """DOT text, left to right; ``selected`` is drawn with a thick coloured border."""
        out = [
            "digraph lineage {",
            '  graph [rankdir=LR, nodesep=0.12, ranksep=0.3, fontname="Helvetica", fontsize=12, '
            'bgcolor="transparent", newrank=true];',
            '  node [fontname="Helvetica", fontsize=12, style="rounded,filled", penwidth=1, '
            'color="#5f6368", margin="0.08,0.03", height=0.3];',
            '  edge [color="#9aa0a6", arrowsize=0.6];',
        ]
        by_cluster: dict[str | None, list[Node]] = {}
        for node in self.nodes.values():
            by_cluster.setdefault(node.cluster, []).append(node)
        for cid, (label, status) in self.clusters.items():
            out.append(f"  subgraph {_q('cluster_' + cid)} {{")
            colour = {"failed": "#d93025", "running": "#f9ab00"}.get(status, "#bdc1c6")
            style = f'labeljust=l; style="rounded"; color="{colour}"; fontsize=12; margin=6;'
            out.append(f"    label={_q(label)}; {style}")
            out += ["    " + _node_dot(n, selected) for n in by_cluster.get(cid, [])]
            out.append("  }")
        out += ["  " + _node_dot(n, selected) for n in by_cluster.get(None, [])]
        for (src, dst), style in self.edges.items():
            out.append(f"  {_q(src)} -> {_q(dst)} [style={style}];")
        out.append("}")
        return "\n".join(out)


def _q(text: str) -> str:
    """A DOT double-quoted string (the only quoting DOT needs for ids and labels)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _node_dot(node: Node, selected: str | None) -> str:
    attrs = [f"label={_q(node.label)}", f"shape={node.shape}", f'fillcolor="{node.fill}"']
    if node.id == selected:
        attrs += [f'color="{SELECTED}"', "penwidth=3"]
    return f"{_q(node.id)} [{', '.join(attrs)}];"
