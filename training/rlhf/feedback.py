"""Human feedback from the catalog turned into preference pairs, and the snapshot → feedback links.

Feedback rows (``catalog.models.Feedback``, written by ``/v1/feedback`` and the dashboard) are
either comparisons (kind ``preference`` or ``comparison``: ``preferred`` 'a' is ``completion_id``,
'b' is ``other_completion_id``) or ratings of one completion, optionally flagged ``unsafe``.

* A comparison is one pair: the preferred response chosen, the other rejected.
* Ratings are compared within a prompt: two completions of the same prompt whose mean ratings
  differ by ``min_rating_gap`` or more make a pair; an unsafe completion loses to every safe one.
* An unsafe completion with no safe sibling is paired against the refusal: refusing is preferred.

The labeller of a row is who gave it (the API key's name, or the dashboard's identity), never the
request's ``user``. One labeller has one label per completion and per pair (the newest; the catalog
also keeps only one since revision 0004), and a labeller who disagrees with the others' majority
beyond ``max_disagreement`` is left out (:mod:`training.rlhf.labellers`).

Every row read is used, quarantined (malformed: a comparison of two different prompts, a chat
prompt that does not parse, a pair longer than the context, ...) or skipped (a lone rating):
the counts add up.
"""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from catalog import lineage
from catalog.artifacts import ArtifactRef
from catalog.db import migrate, session_scope
from catalog.models import Artifact, Completion, Feedback, PreferenceFeedback, feedback_target
from gpt.chat import check_messages
from gpt.tokenizer import CHAT_TOKENS
from training.rlhf.labellers import labeller_of, outliers, votes
from training.rlhf.pairs import PreferencePair, PreferenceSet, pair_problem, quarantine

if TYPE_CHECKING:
    from sqlalchemy.orm import Session
    from tokenizers import Tokenizer

COMPARISON_KINDS = ("preference", "comparison")
SYSTEM, USER, ASSISTANT, END = CHAT_TOKENS
_TURN = re.compile(
    "(" + "|".join(re.escape(t) for t in (SYSTEM, USER, ASSISTANT)) + ")(.*?)" + re.escape(END) + "\n", re.S
)
_ROLE = {SYSTEM: "system", USER: "user", ASSISTANT: "assistant"}


def parse_prompt(prompt: str, endpoint: str) -> tuple[Mapping[str, str], ...] | str | None:
    """The prompt of a stored completion as messages (chat) or plain text; None when unparseable.

    Serving stores a chat prompt as the chat template's text (``<|user|>hi<|end|>\\n<|assistant|>``);
    a JSON list of messages is accepted too. A ``completions`` prompt is plain text.
    """
    if endpoint != "chat":
        return prompt
    stripped = prompt.strip()
    if stripped.startswith("["):
        try:
            msgs = json.loads(stripped)
        except json.JSONDecodeError:
            return None
        if isinstance(msgs, list) and all(isinstance(m, dict) for m in msgs) and not check_messages(msgs):
            return tuple({"role": m["role"], "content": m["content"]} for m in msgs)
        return None
    body = prompt.removesuffix(ASSISTANT)
    turns = [(m.group(1), m.group(2)) for m in _TURN.finditer(body)]
    # Only a prompt the template could have written: the turns must rebuild it exactly.
    if not turns or "".join(f"{r}{c}{END}\n" for r, c in turns) != body:
        return None
    return tuple({"role": _ROLE[r], "content": c} for r, c in turns)


def _load_rows(session: Session, max_rows: int | None) -> list[Feedback]:
    query = select(Feedback).order_by(Feedback.created_at.desc(), Feedback.id.desc())
    if max_rows is not None:
        query = query.limit(max_rows)
    return list(session.scalars(query))


def feedback_pairs(
    catalog_url: str,
    tokenizer: Tokenizer,
    block_size: int,
    *,
    max_rows: int | None = None,
    min_rating_gap: int = 1,
    refusal: str = "I can't help with that.",
    max_disagreement: float = 0.5,
    min_overlap: int = 3,
) -> PreferenceSet:
    """Preference pairs from the catalog's feedback rows (newest first, at most ``max_rows``).

    Rows an outlier labeller gave, and older labels one labeller replaced, are skipped with the
    reason; ``labellers`` and ``left_out`` of the result say who labelled and who was left out.
    """
    out = PreferenceSet()
    facts, texts = _read_feedback(catalog_url, max_rows)
    out.rows_in["feedback"] = len(facts)

    status: dict[int, dict[str, Any]] = {}  # feedback id -> its quarantine/skip record, if any
    every = facts
    facts = _one_per_target(every, status)
    prompts = {cid: (endpoint, prompt) for cid, (endpoint, prompt, _) in texts.items()}
    per_labeller = Counter(labeller_of(f) for f in facts)
    left_out = outliers(
        votes(facts, prompts, min_rating_gap),
        per_labeller,
        max_disagreement=max_disagreement,
        min_overlap=min_overlap,
    )
    out.labellers.update(per_labeller)
    out.left_out += [lo.to_json() for lo in left_out.values()]
    candidates = _candidates(facts, texts, left_out, status, min_rating_gap, refusal)

    used: set[int] = set()
    failed: dict[int, tuple[str, str]] = {}
    for prompt_text_or_msgs, chosen, rejected, ids in candidates:
        src = "feedback:" + ",".join(map(str, ids))
        if prompt_text_or_msgs is None:
            for i in ids:
                failed.setdefault(
                    i, ("bad_prompt", "the stored chat prompt does not parse as the chat template")
                )
            continue
        problem = pair_problem(tokenizer, block_size, prompt_text_or_msgs, chosen, rejected)
        if problem is not None:
            for i in ids:
                failed.setdefault(i, problem)
            continue
        out.pairs.append(PreferencePair(prompt_text_or_msgs, chosen, rejected, src, tuple(sorted(ids))))
        used.update(ids)
    _account(out, every, used, status, failed, min_rating_gap)
    return out


def _read_feedback(
    catalog_url: str, max_rows: int | None
) -> tuple[list[dict[str, Any]], dict[str, tuple[str, str, str]]]:
    """The feedback rows as plain values, and ``(endpoint, prompt, response)`` of each completion named."""
    migrate(catalog_url)
    with session_scope(catalog_url) as s:
        rows = _load_rows(s, max_rows)
        comps: dict[str, Completion] = {}
        for fb in rows:
            for cid in (fb.completion_id, fb.other_completion_id):
                if cid is not None and cid not in comps:
                    c = s.get(Completion, cid)
                    if c is not None:
                        comps[cid] = c
        # Plain values out of the session: the pairs outlive it.
        return [_facts(fb) for fb in rows], {
            cid: (c.endpoint, c.prompt, c.response) for cid, c in comps.items()
        }


def _candidates(
    facts: list[dict[str, Any]],
    texts: dict[str, tuple[str, str, str]],
    left_out: Mapping[str, Any],
    status: dict[int, dict[str, Any]],
    min_rating_gap: int,
    refusal: str,
) -> list[tuple[Any, str, str, tuple[int, ...]]]:
    """Candidate ``(prompt, chosen, rejected, feedback ids)`` from comparisons and from ratings of one
    prompt's completions; a row that gives none gets its quarantine or skip record in ``status``."""
    candidates: list[tuple[Any, str, str, tuple[int, ...]]] = []
    ratings: dict[tuple[str, str], dict[str, dict[str, Any]]] = defaultdict(dict)  # prompt -> cid -> info
    for f in facts:
        if (who := labeller_of(f)) in left_out:
            status[f["id"]] = skip(f"feedback:{f['id']}", "outlier_labeller", f"{who} {left_out[who].reason}")
            continue
        src = f"feedback:{f['id']}"
        if f["kind"] in COMPARISON_KINDS:
            problem = _comparison(f, texts, candidates)
            if problem:
                status[f["id"]] = quarantine(src, *problem)
        elif f["kind"] == "rating":
            if f["rating"] is None and not f["unsafe"]:
                status[f["id"]] = quarantine(
                    src, "no_rating", "a rating row with neither a rating nor unsafe"
                )
            elif f["completion_id"] not in texts:
                status[f["id"]] = quarantine(
                    src, "no_completion", f"completion {f['completion_id']!r} not found"
                )
            else:
                endpoint, prompt, _ = texts[f["completion_id"]]
                info = ratings[(endpoint, prompt)].setdefault(
                    f["completion_id"], {"ratings": [], "unsafe": False, "ids": []}
                )
                if f["rating"] is not None:
                    info["ratings"].append(f["rating"])
                info["unsafe"] |= f["unsafe"]
                info["ids"].append(f["id"])
        else:
            status[f["id"]] = quarantine(src, "unknown_kind", f"unknown feedback kind {f['kind']!r}")
    for (endpoint, prompt), group in ratings.items():
        _rating_pairs(endpoint, prompt, group, texts, min_rating_gap, refusal, candidates)
    return candidates


def _account(
    out: PreferenceSet,
    every: list[dict[str, Any]],
    used: set[int],
    status: dict[int, dict[str, Any]],
    failed: dict[int, tuple[str, str]],
    min_rating_gap: int,
) -> None:
    """Each feedback row that made no pair goes to ``out.skipped`` or ``out.quarantined``, with its reason."""
    for f in every:
        i, src = f["id"], f"feedback:{f['id']}"
        if i in used:
            continue
        if i in status and status[i].get("skipped"):
            out.skipped.append({k: v for k, v in status[i].items() if k != "skipped"})
        elif i in status:
            out.quarantined.append(status[i])
        elif i in failed:
            out.quarantined.append(quarantine(src, *failed[i]))
        else:
            out.skipped.append(
                quarantine(
                    src,
                    "unpaired",
                    f"no other completion of the same prompt is rated at least {min_rating_gap} apart "
                    "(or flagged unsafe) to compare with",
                )
            )


def skip(source: str, code: str, reason: str) -> dict[str, Any]:
    """A skip record (well-formed feedback left out on purpose), kept in ``status`` beside quarantines."""
    return {**quarantine(source, code, reason), "skipped": True}


def _one_per_target(facts: list[dict[str, Any]], status: dict[int, dict[str, Any]]) -> list[dict[str, Any]]:
    """The newest label of each (labeller, target); older ones (rows from before the catalog kept only
    one) are skipped as replaced. ``facts`` are newest first."""
    seen: set[tuple[str, str]] = set()
    kept = []
    for f in facts:
        key = (labeller_of(f), f["target"])
        if key in seen:
            status[f["id"]] = skip(f"feedback:{f['id']}", "replaced", "a newer label by the same labeller")
            continue
        seen.add(key)
        kept.append(f)
    return kept


def _facts(fb: Feedback) -> dict[str, Any]:
    return {
        "id": fb.id,
        "source": fb.source,
        "labeller": fb.labeller,
        "target": fb.target or feedback_target(fb.completion_id, fb.other_completion_id),
        "kind": fb.kind,
        "completion_id": fb.completion_id,
        "other_completion_id": fb.other_completion_id,
        "rating": fb.rating,
        "preferred": fb.preferred,
        "unsafe": bool(fb.unsafe),
    }


def _comparison(
    f: Mapping[str, Any], texts: Mapping[str, tuple[str, str, str]], candidates: list
) -> tuple[str, str] | None:
    a, b = f["completion_id"], f["other_completion_id"]
    if b is None or f["preferred"] not in ("a", "b"):
        return "bad_comparison", "a comparison needs other_completion_id and preferred 'a' or 'b'"
    missing = [c for c in (a, b) if c not in texts]
    if missing:
        return "no_completion", f"completion(s) {missing} not found"
    (ea, pa, ra), (eb, pb, rb) = texts[a], texts[b]
    if (ea, pa) != (eb, pb):
        return (
            "different_prompts",
            "the two completions answer different prompts; only replies to one prompt compare",
        )
    chosen, rejected = (ra, rb) if f["preferred"] == "a" else (rb, ra)
    candidates.append((parse_prompt(pa, ea), chosen, rejected, (f["id"],)))
    return None


def _rating_pairs(
    endpoint: str,
    prompt: str,
    group: Mapping[str, Mapping[str, Any]],
    texts: Mapping[str, tuple[str, str, str]],
    min_gap: int,
    refusal: str,
    candidates: list,
) -> None:
    parsed = parse_prompt(prompt, endpoint)
    items = sorted(group.items())
    paired: set[str] = set()
    for i, (ca, ia) in enumerate(items):
        for cb, ib in items[i + 1 :]:
            better = _better(ia, ib, min_gap)
            if better is None:
                continue
            (cw, iw), (cl, il) = ((ca, ia), (cb, ib)) if better else ((cb, ib), (ca, ia))
            candidates.append((parsed, texts[cw][2], texts[cl][2], (*iw["ids"], *il["ids"])))
            paired.update((ca, cb))
    for cid, info in items:
        has_safe_sibling = any(not o["unsafe"] for c, o in items if c != cid)
        if info["unsafe"] and not has_safe_sibling:
            # Nothing safe was served for this prompt: teach the refusal instead.
            candidates.append((parsed, refusal, texts[cid][2], tuple(info["ids"])))


def _better(a: Mapping[str, Any], b: Mapping[str, Any], min_gap: int) -> bool | None:
    """True when a beats b, False when b beats a, None when they do not make a pair."""
    if a["unsafe"] != b["unsafe"]:
        return b["unsafe"]
    if a["unsafe"] or not a["ratings"] or not b["ratings"]:
        return None
    ma, mb = sum(a["ratings"]) / len(a["ratings"]), sum(b["ratings"]) / len(b["ratings"])
    if abs(ma - mb) < min_gap:
        return None
    return ma > mb


def link_feedback(catalog_url: str, ref: ArtifactRef, feedback_ids: Sequence[int]) -> int:
    """Record that the ``preferences`` artifact ``ref`` holds pairs built from ``feedback_ids``.

    Idempotent (a re-published identical snapshot links the same rows once). Returns the number
    of links now recorded for the artifact.
    """
    migrate(catalog_url)
    with session_scope(catalog_url) as s:
        art = lineage.record_artifact(s, ref)
        have = set(
            s.scalars(select(PreferenceFeedback.feedback_id).where(PreferenceFeedback.artifact_id == art.id))
        )
        s.add_all(
            PreferenceFeedback(artifact_id=art.id, feedback_id=i) for i in feedback_ids if i not in have
        )
        s.flush()
        return len(have | set(feedback_ids))


def feedback_of(session: Session, artifact_id: int) -> list[Feedback]:
    """The feedback rows a ``preferences`` artifact was built from, oldest first."""
    query = (
        select(Feedback)
        .join(PreferenceFeedback, PreferenceFeedback.feedback_id == Feedback.id)
        .where(PreferenceFeedback.artifact_id == artifact_id)
        .order_by(Feedback.id)
    )
    return list(session.scalars(query))


def snapshots_of(session: Session, feedback_id: int) -> list[Artifact]:
    """Every ``preferences`` artifact that used a feedback row, oldest first."""
    query = (
        select(Artifact)
        .join(PreferenceFeedback, PreferenceFeedback.artifact_id == Artifact.id)
        .where(PreferenceFeedback.feedback_id == feedback_id)
        .order_by(Artifact.id)
    )
    return list(session.scalars(query))
