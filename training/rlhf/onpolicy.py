"""Preference pairs from the policy's own samples, labelled by the task checker.

Task pairs contrast the answer with a few hand-written mistakes; a reward model trained only on
those ranks the policy's *own* mistakes poorly, and RL then drifts into exactly those (reward
hacking). Sampling the starting policy on the training prompts and pairing a correct reply (a
correct sample, else the reference answer) over each distinct wrong sample puts the policy's
real error distribution into the preference set (as RLAIF does with an AI labeller; here the
labeller is the verifier, so the labels are exact).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from training.rlhf.pairs import PreferencePair
from training.rlhf.rollout import rollout
from training.rlhf.scoring import decode_replies
from training.rlhf.sequences import encode_prompt, pad_id
from training.rlhf.tasks import TaskExample, is_correct

if TYPE_CHECKING:
    from tokenizers import Tokenizer

    from gpt.model import GPT


def policy_pairs(
    model: GPT,
    tokenizer: Tokenizer,
    examples: Sequence[TaskExample],
    *,
    samples: int,
    max_new_tokens: int = 16,
    temperature: float = 1.0,
    seed: int = 0,
    batch_size: int = 128,
) -> list[PreferencePair]:
    """Pairs (correct reply, wrong sample) from ``samples`` replies of ``model`` per example.

    Only finished, non-empty wrong replies make pairs (a truncated reply is a length problem,
    which the missing-EOS penalty handles, not a preference); duplicates within a prompt count once.
    """
    out: list[PreferencePair] = []
    if samples < 1 or not examples:
        return out
    prompts = [encode_prompt(tokenizer, ex.messages()) for ex in examples]
    for start in range(0, len(examples), batch_size):
        chunk = prompts[start : start + batch_size]
        ro = rollout(
            model,
            [p for p, _ in chunk],
            max_new_tokens=max_new_tokens,
            stop_ids=chunk[0][1],
            pad_id=pad_id(tokenizer),
            num_samples=samples,
            temperature=temperature,
            seed=seed + start,
        )
        texts = decode_replies(ro, tokenizer)
        for g in range(len(chunk)):
            ex = examples[start + g]
            rows = range(g * samples, (g + 1) * samples)
            replies = [texts[i] for i in rows if bool(ro.finished[i]) and texts[i].strip()]
            good = [t for t in replies if is_correct(ex, t)]
            chosen = good[0] if good else ex.answer
            for bad in dict.fromkeys(t for t in replies if not is_correct(ex, t)):
                out.append(PreferencePair(tuple(ex.messages()), chosen, bad, f"policy:{ex.family}"))
    return out
