"""Task accuracy on verifiable tasks: a chat prompt and a check of the reply.

The protocol is deliberately small so any task source fits it: an item has a ``task`` name, chat
``messages`` (``{"role", "content"}`` dicts, rendered with :mod:`gpt.chat`) and a
``check(reply) -> bool``. The RLHF tasks and any future benchmark are adapted to it with a few
lines; :func:`builtin_items` is a small arithmetic-and-copy set used when nothing else is given.
Replies are greedy, so a score is a property of the weights alone.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from training.eval.sampling import sample_replies

if TYPE_CHECKING:
    from tokenizers import Tokenizer

    from gpt.model import GPT


@runtime_checkable
class TaskItem(Protocol):
    """What task accuracy needs of one item."""

    task: str
    messages: Sequence[Mapping[str, str]]

    def check(self, reply: str) -> bool:
        """Whether ``reply`` (the assistant's text, stop marker excluded) is correct."""
        ...


@dataclass(frozen=True)
class EvalItem:
    """A ready-made :class:`TaskItem`: ``check`` is any callable on the reply text."""

    task: str
    messages: Sequence[Mapping[str, str]]
    check: Callable[[str], bool]
    reference: str | None = None  # the expected answer, for the report only


@dataclass
class TaskResult:
    """Task accuracy of one model."""

    accuracy: float
    per_task: dict[str, dict[str, float]]  # task -> {"correct", "total", "accuracy"}
    items: list[dict[str, object]] = field(default_factory=list)  # task, prompt, reply, correct
    correct: list[bool] = field(default_factory=list)  # per item, in order (the gates' intervals)


_INT = re.compile(r"-?\d+")
_COPY_WORDS = (
    "river garden lantern meadow bridge forest candle station orchard library pebble thunder compass "
    "ribbon saddle harbour village engine silver winter market window kitchen morning"
).split()


def first_int(reply: str) -> int | None:
    """The first integer in ``reply`` (``"It is 7."`` → 7), or None."""
    m = _INT.search(reply)
    return int(m.group()) if m else None


def builtin_items(n: int, seed: int = 0) -> list[EvalItem]:
    """``n`` items alternating two families: ``add`` (one-digit sums) and ``copy`` (repeat a word).

    Deterministic in ``seed``; the checks are lenient about surrounding text (``"The answer is 7"``
    passes ``What is 3 + 4?``) but strict about the answer itself.
    """
    rng = random.Random(seed)
    items: list[EvalItem] = []
    for i in range(n):
        if i % 2 == 0:
            a, b = rng.randint(0, 9), rng.randint(0, 9)
            items.append(
                EvalItem(
                    task="add",
                    messages=[{"role": "user", "content": f"What is {a} + {b}?"}],
                    check=lambda r, s=a + b: first_int(r) == s,
                    reference=str(a + b),
                )
            )
        else:
            w = rng.choice(_COPY_WORDS)
            items.append(
                EvalItem(
                    task="copy",
                    messages=[{"role": "user", "content": f"Repeat after me: {w}"}],
                    check=lambda r, w=w: r.strip().lower().rstrip(".!").startswith(w),
                    reference=w,
                )
            )
    return items


def check_items(items: Sequence[object]) -> None:
    """Raise one error naming every item that does not follow the :class:`TaskItem` protocol."""
    bad = [
        f"items[{i}] ({type(it).__name__})"
        for i, it in enumerate(items)
        if not (isinstance(it, TaskItem) and callable(getattr(it, "check", None)))
    ]
    if bad:
        raise TypeError(
            "task items need a 'task' name, chat 'messages' and a 'check(reply) -> bool' "
            f"(see training.eval.tasks.EvalItem); not so: {', '.join(bad[:10])}"
        )


def task_accuracy(
    model: GPT,
    tokenizer: Tokenizer,
    items: Sequence[TaskItem],
    *,
    max_new_tokens: int = 16,
    keep_items: int = 32,
) -> TaskResult:
    """Greedy reply to every item, checked by the item.

    Args:
        model: the GPT.
        tokenizer: its tokenizer.
        items: the task items (see :class:`TaskItem`).
        max_new_tokens: tokens generated per reply.
        keep_items: how many per-item records to keep for the report.

    Returns:
        Overall and per-task accuracy; a check that raises counts as wrong (and is logged in the item).
    """
    check_items(items)
    per: dict[str, dict[str, float]] = {}
    records: list[dict[str, object]] = []
    correct_total = 0
    correct: list[bool] = []
    for item in items:
        (reply,) = sample_replies(
            model, tokenizer, item.messages, fmt="chat", max_new_tokens=max_new_tokens, temperature=0.0
        )
        try:
            ok = bool(item.check(reply.text))
            error = None
        except Exception as e:  # a buggy check must not sink the whole evaluation
            ok, error = False, f"{type(e).__name__}: {e}"
        counts = per.setdefault(item.task, {"correct": 0, "total": 0})
        counts["correct"] += ok
        counts["total"] += 1
        correct_total += ok
        correct.append(ok)
        if len(records) < keep_items:
            rec: dict[str, object] = {
                "task": item.task,
                "prompt": item.messages[-1].get("content", ""),
                "reply": reply.text,
                "correct": ok,
            }
            if error:
                rec["error"] = error
            records.append(rec)
    for counts in per.values():
        counts["accuracy"] = counts["correct"] / counts["total"]
    return TaskResult(
        accuracy=correct_total / len(items) if items else float("nan"),
        per_task=per,
        items=records,
        correct=correct,
    )
