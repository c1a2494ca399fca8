"""Who labelled what, and which labellers to leave out of a preference snapshot.

Each labeller (an API key's name, or a dashboard identity) casts *votes*: a comparison is a vote for
one completion over another; two of the labeller's own ratings of replies to one prompt, at least
``min_rating_gap`` apart, are a vote for the higher-rated one. A labeller's vote on a pair is
*compared* when at least two other labellers voted on that pair and they have a majority (more votes
for one side than the other; one other labeller alone is no majority, so two labellers who disagree
never exclude each other), and it *disagrees* when that majority chose the other side.

A labeller with at least ``min_overlap`` compared votes of which more than ``max_disagreement``
disagree is an outlier: all of their labels are left out of the snapshot, and the data card says so
and why. One key posting many labels cannot outvote the others either way: it has one vote per pair.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

Pair = tuple[str, str]  # two completion ids, sorted


@dataclass(frozen=True)
class LeftOut:
    """A labeller left out of a snapshot, and why."""

    labeller: str
    labels: int
    compared: int
    disagreed: int
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {
            "labeller": self.labeller,
            "labels": self.labels,
            "compared": self.compared,
            "disagreed": self.disagreed,
            "reason": self.reason,
        }


def labeller_of(fact: Mapping[str, Any]) -> str:
    """A feedback row's labeller as the snapshot names it: ``api:<key name>`` or ``dashboard:<identity>``."""
    return f"{fact['source']}:{fact.get('labeller') or 'unknown'}"


def votes(
    facts: Iterable[Mapping[str, Any]], prompts: Mapping[str, tuple[str, str]], min_rating_gap: int
) -> dict[str, dict[Pair, str]]:
    """Each labeller's votes: ``{labeller: {pair: winning completion id}}``.

    Args:
        facts: feedback rows as dicts (kind, completion ids, rating, preferred, source, labeller).
        prompts: completion id -> (endpoint, prompt), to group a labeller's ratings by prompt.
        min_rating_gap: how far apart two ratings must be to count as a vote.
    """
    out: dict[str, dict[Pair, str]] = defaultdict(dict)
    ratings: dict[tuple[str, tuple[str, str]], dict[str, int]] = defaultdict(dict)
    for f in facts:
        who = labeller_of(f)
        a, b = f["completion_id"], f.get("other_completion_id")
        if b is not None and f.get("preferred") in ("a", "b"):
            pair: Pair = (a, b) if a < b else (b, a)
            out[who][pair] = a if f["preferred"] == "a" else b
        elif b is None and f.get("rating") is not None and a in prompts:
            ratings[(who, prompts[a])][a] = f["rating"]
    for (who, _), rated in ratings.items():
        items = sorted(rated.items())
        for i, (ca, ra) in enumerate(items):
            for cb, rb in items[i + 1 :]:
                if abs(ra - rb) >= min_rating_gap:
                    out[who].setdefault((ca, cb), ca if ra > rb else cb)
    return dict(out)


def outliers(
    by_labeller: Mapping[str, Mapping[Pair, str]],
    labels: Mapping[str, int],
    *,
    max_disagreement: float,
    min_overlap: int,
) -> dict[str, LeftOut]:
    """The labellers whose votes disagree with the other labellers' majority beyond ``max_disagreement``.

    Args:
        by_labeller: :func:`votes`.
        labels: feedback rows per labeller (for the data card).
        max_disagreement: the largest share of compared votes that may disagree (0.5: half).
        min_overlap: compared votes needed before a labeller can be judged.
    """
    voters: dict[Pair, Counter[str]] = defaultdict(Counter)
    for cast in by_labeller.values():
        for pair, winner in cast.items():
            voters[pair][winner] += 1
    out = {}
    for who, cast in by_labeller.items():
        compared = disagreed = 0
        for pair, winner in cast.items():
            others = voters[pair].copy()
            others[winner] -= 1  # leave this labeller's own vote out
            a, b = pair
            if others[a] == others[b] or others[a] + others[b] < 2:
                continue  # a tie, or fewer than two others: no majority to compare with
            compared += 1
            disagreed += (a if others[a] > others[b] else b) != winner
        if compared >= min_overlap and disagreed / compared > max_disagreement:
            out[who] = LeftOut(
                who,
                labels.get(who, 0),
                compared,
                disagreed,
                f"disagrees with the majority of the other labellers on {disagreed} of {compared} shared "
                f"pairs ({disagreed / compared:.0%} > rlhf.preferences.max_disagreement "
                f"{max_disagreement:.0%})",
            )
    return out
