"""Preference pairs: JSONL import with quarantine, the preference set, and its versioned snapshot.

A run's preference set joins three sources: generated pairs (from the verifiable tasks of
training/rlhf/tasks.py, and from the policy's own samples, training/rlhf/onpolicy.py), JSONL files
in the common ``{prompt, chosen, rejected}`` form, and human feedback from the catalog
(training/rlhf/feedback.py). Every input row is accounted for: it becomes a pair, or it is
quarantined with a reason (malformed: not JSON, missing fields, chosen identical to rejected,
longer than the context), or skipped with a reason (well-formed feedback that makes no pair, such
as a lone rating). Nothing is dropped silently.

The set is snapshotted as a ``preferences`` artifact (``pairs.jsonl``, ``heldout.jsonl``,
``quarantine.jsonl``, ``manifest.json``, ``DATACARD.md``: distinct labellers, and the labellers
left out with the reason) whose content hash is its version; the catalog table
``preference_feedback`` links it to every feedback row it used.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from catalog.artifacts import ArtifactRef, open_artifact, publish
from catalog.redact import redact_url
from gpt.chat import check_messages
from training.rlhf.feedback import feedback_pairs, link_feedback
from training.rlhf.pairs import PreferencePair, PreferenceSet, pair_problem, quarantine

if TYPE_CHECKING:
    from tokenizers import Tokenizer

log = logging.getLogger(__name__)

KIND = "preferences"
PAIRS_FILE, HELDOUT_FILE, QUARANTINE_FILE, MANIFEST_FILE, DATACARD_FILE = (
    "pairs.jsonl",
    "heldout.jsonl",
    "quarantine.jsonl",
    "manifest.json",
    "DATACARD.md",
)


class EmptyPreferencesError(ValueError):
    """No usable preference pair: the stage cannot train and leaves every model untouched."""


def parse_row(row: Any) -> tuple[Any, str, str] | tuple[str, str]:
    """Validate one JSONL object; (prompt, chosen, rejected) or (code, reason) naming every problem."""
    if not isinstance(row, dict):
        return (
            "not_object",
            f"a row must be a JSON object with prompt, chosen, rejected; got {type(row).__name__}",
        )
    missing = [k for k in ("prompt", "chosen", "rejected") if k not in row or row[k] is None]
    if missing:
        return (
            "missing_fields",
            f"missing field(s) {', '.join(missing)}; each row needs prompt, chosen, rejected",
        )
    problems = []
    prompt = row["prompt"]
    if isinstance(prompt, str):
        if not prompt.strip():
            problems.append("prompt is empty")
        # A bare string in the common JSONL form is the user's message.
        prompt = ({"role": "user", "content": prompt},)
    elif isinstance(prompt, list) and all(isinstance(m, dict) for m in prompt):
        problems += [f"prompt: {p}" for p in check_messages(prompt)]
        prompt = tuple({"role": m.get("role"), "content": m.get("content")} for m in prompt)
    else:
        problems.append("prompt must be a string or a list of {role, content} messages")
    for k in ("chosen", "rejected"):
        if not isinstance(row[k], str):
            problems.append(f"{k} must be a string, got {type(row[k]).__name__}")
        elif not row[k].strip():
            problems.append(f"{k} is empty")
    if problems:
        return "bad_fields", "; ".join(problems)
    return prompt, row["chosen"], row["rejected"]


def import_jsonl(path: str | Path, tokenizer: Tokenizer, block_size: int) -> PreferenceSet:
    """Read ``{prompt, chosen, rejected}`` rows; quarantine each bad one with its line and reason.

    Raises:
        FileNotFoundError: naming the file and the config key that lists it.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: preference file not found; fix or remove it in rlhf.preferences.files"
        )
    out = PreferenceSet()
    with open(path, encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            out.rows_in["jsonl"] += 1
            source = f"jsonl:{path.name}:{n}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                out.quarantined.append(quarantine(source, "not_json", f"not valid JSON ({e.msg})", line))
                continue
            parsed = parse_row(row)
            if len(parsed) == 2:
                out.quarantined.append(quarantine(source, parsed[0], parsed[1], row))
                continue
            prompt, chosen, rejected = parsed
            problem = pair_problem(tokenizer, block_size, prompt, chosen, rejected)
            if problem is not None:
                out.quarantined.append(quarantine(source, *problem, row))
                continue
            out.pairs.append(PreferencePair(prompt, chosen, rejected, source))
    return out


def build_preference_set(
    tokenizer: Tokenizer,
    block_size: int,
    *,
    generated: Sequence[PreferencePair] = (),
    files: Iterable[str | Path] = (),
    catalog_url: str | None = None,
    max_feedback: int | None = None,
    min_rating_gap: int = 1,
    refusal: str = "I can't help with that.",
    max_disagreement: float = 0.5,
    min_overlap: int = 3,
) -> PreferenceSet:
    """Join generated pairs, JSONL files and (with ``catalog_url``) catalog feedback into one set.

    ``generated`` are pairs generated here (from the tasks, or from policy samples); each is
    counted under its source's prefix (``task``, ``policy``).

    Raises:
        EmptyPreferencesError: no pair survived; the message counts each source and says how to fill it.
    """
    out = PreferenceSet()
    kept = PreferenceSet()
    for p in generated:
        kept.rows_in[p.source.split(":")[0]] += 1
        problem = pair_problem(tokenizer, block_size, p.prompt, p.chosen, p.rejected)
        if problem is None:
            kept.pairs.append(p)
        else:
            kept.quarantined.append(quarantine(p.source, *problem))
    out.extend(kept)
    files = list(files)
    for path in files:
        out.extend(import_jsonl(path, tokenizer, block_size))
    if catalog_url is not None:
        out.extend(
            feedback_pairs(
                catalog_url,
                tokenizer,
                block_size,
                max_rows=max_feedback,
                min_rating_gap=min_rating_gap,
                refusal=refusal,
                max_disagreement=max_disagreement,
                min_overlap=min_overlap,
            )
        )
    if not out.pairs:
        where = f"from {_safe_url(catalog_url)}" if catalog_url else "rlhf.preferences.use_feedback is off"
        raise EmptyPreferencesError(
            "the preference set is empty: "
            f"{out.rows_in['task']} task pairs (rlhf.preferences.use_tasks), "
            f"{out.rows_in['policy']} policy-sample pairs (rlhf.preferences.policy_samples), "
            f"{out.rows_in['jsonl']} JSONL rows from {len(files)} file(s) (rlhf.preferences.files), "
            f"{out.rows_in['feedback']} feedback rows ({where}); "
            f"{len(out.quarantined)} quarantined, {len(out.skipped)} skipped. Fill it by enabling the task "
            "pairs, listing {prompt, chosen, rejected} JSONL files in rlhf.preferences.files, or posting "
            "comparisons and ratings to /v1/feedback (or the dashboard's feedback page)"
        )
    return out


def _safe_url(url: str) -> str:
    return redact_url(url)


def datacard(manifest: Mapping[str, Any]) -> str:
    """The snapshot's data card: where its pairs came from, who labelled, who was left out and why."""
    out = ["# Data card: preferences", ""]
    out.append(f"Pairs: **{manifest['pairs']}** (held out: {manifest.get('heldout', 0)})")
    out += ["", "| source | rows in | pairs |", "| --- | --- | --- |"]
    rows_in, pairs = manifest["rows_in"], manifest["pairs_by_source"]
    for src in sorted(set(rows_in) | set(pairs)):
        out.append(f"| {src} | {rows_in.get(src, 0)} | {pairs.get(src, 0)} |")
    out += ["", f"## Human feedback: {manifest['labellers']} distinct labeller(s)", ""]
    if manifest["labels_by_labeller"]:
        out += ["| labeller | labels |", "| --- | --- |"]
        out += [f"| {who} | {n} |" for who, n in manifest["labels_by_labeller"].items()]
        out.append("")
    out += ["## Left out", ""]
    if manifest["left_out_labellers"]:
        for lo in manifest["left_out_labellers"]:
            out.append(f"- **{lo['labeller']}** ({lo['labels']} labels): {lo['reason']}")
    else:
        out.append("No labeller was left out.")
    for title, key in (("Skipped", "skipped_by_reason"), ("Quarantined", "quarantined_by_reason")):
        if manifest[key]:
            out += ["", f"## {title}", ""] + [f"- {code}: {n}" for code, n in manifest[key].items()]
    return "\n".join(out) + "\n"


def snapshot_preferences(
    pset: PreferenceSet,
    heldout: Sequence[PreferencePair] = (),
    *,
    root: str | Path | None = None,
    dest: str | Path | None = None,
    catalog_url: str | None = None,
    metadata: dict[str, Any] | None = None,
) -> ArtifactRef:
    """Publish the set as a ``preferences`` artifact and link it to its feedback rows in the catalog.

    Args:
        pset: the preference set (its pairs, quarantine and skip lists are all stored).
        heldout: pairs kept out of training, for reward-model accuracy.
        root: publish under ``root/preferences/<sha256[:16]>``.
        dest: publish at exactly this path.
        catalog_url: record the artifact and a ``preference_feedback`` row per feedback row used.
        metadata: run facts for the index (not part of the hash).
    """
    with publish(KIND, root=root, dest=dest) as st:
        _write_jsonl(st.path / PAIRS_FILE, (p.to_json() for p in pset.pairs))
        _write_jsonl(st.path / HELDOUT_FILE, (p.to_json() for p in heldout))
        _write_jsonl(
            st.path / QUARANTINE_FILE, [*pset.quarantined, *({"skipped": True, **s} for s in pset.skipped)]
        )
        manifest = {**pset.manifest(), "heldout": len(heldout)}
        (st.path / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, sort_keys=True))
        (st.path / DATACARD_FILE).write_text(datacard(manifest))
        st.metadata.update({k: v for k, v in manifest.items() if k != "feedback_ids"})
        st.metadata.update(metadata or {})
    assert st.ref is not None
    if catalog_url is not None and pset.feedback_ids():
        link_feedback(catalog_url, st.ref, pset.feedback_ids())
    log.info(
        "preferences %s: %d pairs, %d held out, %d quarantined, %d skipped",
        st.ref.sha256[:16],
        len(pset.pairs),
        len(heldout),
        len(pset.quarantined),
        len(pset.skipped),
    )
    return st.ref


def load_preferences(
    path_or_ref: str | Path | ArtifactRef,
) -> tuple[list[PreferencePair], list[PreferencePair]]:
    """The (training pairs, held-out pairs) of a ``preferences`` artifact (hash-verified)."""
    path = path_or_ref.path if isinstance(path_or_ref, ArtifactRef) else Path(path_or_ref)
    ref = open_artifact(path, kind=KIND)
    return _read_pairs(ref.path / PAIRS_FILE), _read_pairs(ref.path / HELDOUT_FILE)


def _read_pairs(path: Path) -> list[PreferencePair]:
    with open(path, encoding="utf-8") as f:
        return [PreferencePair.from_json(json.loads(line)) for line in f if line.strip()]


def _write_jsonl(path: Path, rows: Iterable[Mapping[str, Any]]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n")
