"""Stage caching: a night reuses what an earlier run of the same stage identity already published.

A stage's identity is the sha256 of:

* the content hashes of its inputs (artifacts; for ingest, the bytes of every source file; for the
  reward model, also the human feedback rows and preference files it reads);
* the config slice the stage reads (see each ``*_key`` function);
* a code-version key: the package version and a per-stage salt (:data:`SALT`), bumped by hand when
  a stage's semantics change without a version bump.

When a stage's identity already has a memo whose artifacts verify (:mod:`catalog.memo`), the stage
does not run: its MLflow child run is still opened, tagged ``nightshift.cached_from`` with the run
that produced the result and a ``CACHED.md`` that links it, and it records the reused artifacts as
inputs, so the night's lineage stays whole. So a night that failed at ``deploy``, run again, redoes
only ``deploy``; a night whose pretraining crashed resumes there. ``night.cache: false`` (the
``no_cache`` flow parameter) or ``night.rerun: [stage]`` forces a run.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import fsspec
from sqlalchemy import select

from catalog import memo as memos
from catalog.artifacts import ArtifactRef, file_sha256
from catalog.db import migrate, session_scope
from catalog.models import Feedback
from catalog.tracking import TAG_PREFIX, StageRun
from catalog.verdict import Verdict
from core.config import Config, nightshift_home
from core.version import package_version
from gpt.tokenizer import TOKENIZER_FILE
from training import stages
from training.data.ingest import IngestResult
from training.data.sources import resolve_sources
from training.data.tokenize import TokenizeResult
from training.rlhf.stages import RLHFStageResult

log = logging.getLogger(__name__)

# Bump a stage's salt when its output changes for the same inputs and config (a fixed bug, a new
# default inside the code): every memo of that stage is then a miss.
SALT: dict[str, int] = {
    "ingest": 1,
    "tokenize": 1,
    "pretrain": 1,
    "parent": 1,
    "sft": 1,
    "reward": 1,
    "ppo": 1,
    "dpo": 1,
    "grpo": 1,
    "evaluate": 1,
}
# DataConfig keys only the tokenize stage reads; every other data key is the ingest stage's.
TOKENIZE_KEYS = (
    "tokenizer",
    "vocab_size",
    "min_frequency",
    "tokenizer_train_bytes",
    "val_fraction",
    "token_shard_tokens",
)

# On a stage's MLflow run: the run whose result it reused, and its identity.
TAG_CACHED_FROM = f"{TAG_PREFIX}cached_from"
TAG_STAGE_KEY = f"{TAG_PREFIX}stage_key"

R = TypeVar("R")


def stage_key(stage: str, inputs: Mapping[str, Any], config: Any) -> str:
    """The identity of a stage: its inputs' hashes, its config slice and the code version."""
    blob = json.dumps(
        {
            "stage": stage,
            "salt": SALT[stage],
            "code": package_version(),
            "inputs": inputs,
            "config": config,
        },
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()


def _sha(ref: ArtifactRef | None) -> str | None:
    return ref.sha256 if ref is not None else None


def source_fingerprints(cfg: Config, sources: list[str] | None) -> list[dict[str, Any]]:
    """Per read unit of the sources, what identifies its content: the sha256 of a local file or an
    inline one, the store's own key (ETag, size, mtime) of a remote one.

    A file that changed under the same path is a new input, so the ingest stage runs again.
    """
    units, quarantined = resolve_sources(list(sources if sources is not None else cfg.data.sources), cfg.data)
    out: list[dict[str, Any]] = []
    for unit in units:
        url = unit["url"]
        if unit["data"] is not None:
            content = hashlib.sha256(unit["data"]).hexdigest()
        elif "://" not in url:
            content = file_sha256(Path(url))
        else:
            fs, path = fsspec.core.url_to_fs(url)
            content = "ukey:" + str(fs.ukey(path))
        out.append(
            {"source": unit["source"], "url": url, "member_glob": unit["member_glob"], "content": content}
        )
    out += [{"quarantined": q["item"], "reason": q["reason"]} for q in quarantined]
    return out


def ingest_key(cfg: Config, sources: list[str] | None) -> str:
    config = {k: v for k, v in cfg.data.model_dump(mode="json").items() if k not in TOKENIZE_KEYS}
    config.pop("sources")  # what they hold is in the inputs
    return stage_key("ingest", {"sources": source_fingerprints(cfg, sources)}, config)


def tokenize_key(cfg: Config, corpus: ArtifactRef, champion: ArtifactRef | None = None) -> str:
    data = cfg.data.model_dump(mode="json")
    # Under reuse the champion's tokenizer file is an input; the training settings then do not apply.
    reused = champion.files[TOKENIZER_FILE]["sha256"] if champion is not None else None
    config = (
        {k: data[k] for k in TOKENIZE_KEYS} if reused is None else {"val_fraction": cfg.data.val_fraction}
    )
    inputs = {"corpus": corpus.sha256, "tokenizer": reused}
    return stage_key(
        "tokenize", inputs, {**config, "token_shard_tokens": cfg.data.token_shard_tokens, "seed": cfg.seed}
    )


def _pretrain_config(cfg: Config) -> dict[str, Any]:
    # What pretraining reads of the config: the model shape, the train section and the seed.
    return {
        "model": cfg.model.model_dump(mode="json"),
        "train": cfg.train.model_dump(mode="json"),
        "seed": cfg.seed,
    }


def pretrain_key(
    cfg: Config,
    tokens: ArtifactRef,
    tokenizer: ArtifactRef,
    parent: ArtifactRef | None = None,
    replay: ArtifactRef | None = None,
) -> str:
    config = _pretrain_config(cfg)
    inputs = {
        "tokens": tokens.sha256,
        "tokenizer": tokenizer.sha256,
        # The model it starts from and the tokens it replays, not the train.init spelling: a new
        # champion is a new pretraining.
        "parent": parent.sha256 if parent is not None else None,
        "replay": replay.sha256 if replay is not None else None,
    }
    return stage_key("pretrain", inputs, config)


def _rlhf_config(cfg: Config) -> dict[str, Any]:
    # The RLHF stages read their own section, the stage rules and tasks of eval, and the model shape.
    return {
        "rlhf": cfg.rlhf.model_dump(mode="json"),
        "eval": cfg.eval.model_dump(mode="json"),
        "model": cfg.model.model_dump(mode="json"),
        "seed": cfg.seed,
    }


def feedback_fingerprint(cfg: Config) -> str | None:
    """A hash of every feedback row the reward stage could read (None when it reads none): a new,
    replaced or removed label changes it, so the preference snapshot is rebuilt."""
    if not cfg.rlhf.preferences.use_feedback:
        return None
    migrate(cfg.tracking.catalog_url)
    query = select(
        Feedback.id, Feedback.kind, Feedback.rating, Feedback.preferred, Feedback.unsafe, Feedback.created_at
    ).order_by(Feedback.id)
    h = hashlib.sha256()
    with session_scope(cfg.tracking.catalog_url) as s:
        for row in s.execute(query):
            h.update(repr(tuple(row)).encode())
    return h.hexdigest()


def reward_key(cfg: Config, sft: ArtifactRef) -> str:
    files = {f: file_sha256(Path(f)) for f in cfg.rlhf.preferences.files if Path(f).is_file()}
    inputs = {"sft": sft.sha256, "feedback": feedback_fingerprint(cfg), "preference_files": files}
    return stage_key("reward", inputs, _rlhf_config(cfg))


def sft_key(cfg: Config, base: ArtifactRef, tokens: ArtifactRef | None) -> str:
    return stage_key("sft", {"base": base.sha256, "tokens": _sha(tokens)}, _rlhf_config(cfg))


def policy_key(
    cfg: Config,
    sft: ArtifactRef,
    reward: RLHFStageResult,
    tokens: ArtifactRef | None,
    base: ArtifactRef | None,
) -> str:
    inputs = {
        "sft": sft.sha256,
        "reward_model": reward.model.sha256,
        "preferences": _sha(reward.preferences),
        "tokens": _sha(tokens),
        "base": _sha(base),
    }
    return stage_key(cfg.rlhf.algorithm, inputs, _rlhf_config(cfg))


def evaluate_key(
    cfg: Config,
    candidate: ArtifactRef,
    tokens: ArtifactRef | None,
    reward_model: ArtifactRef | None,
    reference: ArtifactRef | None,
) -> str:
    inputs = {
        "candidate": candidate.sha256,
        "tokens": _sha(tokens),
        "reward_model": _sha(reward_model),
        "reference": _sha(reference),
    }
    config = {**_rlhf_config(cfg), "registered_model": cfg.serve.registered_model}
    return stage_key("evaluate", inputs, config)


# --- reuse or run ----------------------------------------------------------------------------------


def _reused(run: StageRun, memo: memos.Memo) -> None:
    """Record on this night's stage run that its result comes from ``memo``'s run."""
    url = run.tracker.run_url(memo.mlflow_run_id) if memo.mlflow_run_id else None
    run.set_tag(TAG_CACHED_FROM, memo.mlflow_run_id or memo.run_id)
    run.set_tag(TAG_STAGE_KEY, memo.key)
    where = f"[{memo.mlflow_run_id}]({url})" if url else f"`{memo.mlflow_run_id or memo.run_id}`"
    lines = [
        f"# Cached: {memo.stage}",
        "",
        f"This stage did not run: its identity `{memo.key[:16]}` (input hashes, config slice, code "
        f"version) already produced its result in run {where}, and every artifact verified.",
        "",
        *(f"- {role}: `{ref.kind}` `{ref.sha256[:16]}`" for role, ref in memo.refs.items()),
    ]
    run.log_text("\n".join(lines) + "\n", "CACHED.md")
    # The producing run's figures too, so the nights compare side by side in the MLflow UI.
    metrics = run.tracker.client.get_run(memo.mlflow_run_id).data.metrics if memo.mlflow_run_id else {}
    run.log_metrics({**metrics, "cached": 1.0})
    for ref in memo.refs.values():
        run.use(ref, context="cached")
    log.info(
        "%s: cached from run %s%s", memo.stage, memo.mlflow_run_id or memo.run_id, f" ({url})" if url else ""
    )


def cached(
    cfg: Config,
    run: StageRun,
    stage: str,
    key: str,
    build: Callable[[], R],
    encode: Callable[[R], tuple[dict[str, ArtifactRef | None], dict[str, Any]]],
    decode: Callable[[memos.Memo], R | None],
    equivalent: Callable[[], memos.Memo | None] | None = None,
) -> R:
    """``build()``'s result, or the memo of ``key`` when there is one that verifies (and decodes).

    ``encode`` turns a result into its artifacts by role and a JSON-able rest; ``decode`` turns a
    memo back into a result, or None when it no longer holds (the stage then runs). ``equivalent``
    finds a memo of another identity known to give the same result, tried when ``key`` has none.
    """
    url = cfg.tracking.catalog_url
    if cfg.night.cached(stage):
        memo = memos.recall(url, key)
        if memo is None and equivalent is not None:
            memo = equivalent()
        result = decode(memo) if memo is not None else None
        if memo is not None and result is not None:
            _reused(run, memo)
            return result
    else:
        log.info("%s: caching is off for this stage (night.cache / night.rerun); running it", stage)
    result = build()
    refs, rest = encode(result)
    run.set_tag(TAG_STAGE_KEY, key)
    memos.remember(
        url, key, stage, run_id=run.catalog_run_id, mlflow_run_id=run.mlflow_run_id, refs=refs, result=rest
    )
    return result


def _json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def ingest(cfg: Config, run: StageRun, sources: list[str] | None = None) -> IngestResult:
    """:func:`training.stages.ingest_stage`, reused when the same sources and config were ingested."""

    def decode(m: memos.Memo) -> IngestResult:
        corpus = m.refs["corpus"]
        return IngestResult(
            corpus, _json(corpus.path / "manifest.json"), (corpus.path / "DATACARD.md").read_text()
        )

    return cached(
        cfg,
        run,
        "ingest",
        ingest_key(cfg, sources),
        lambda: stages.ingest_stage(cfg, run, sources=sources),
        lambda r: ({"corpus": r.artifact}, {}),
        decode,
    )


def tokenize(
    cfg: Config, run: StageRun, corpus: ArtifactRef, champion: ArtifactRef | None = None
) -> TokenizeResult:
    """:func:`training.stages.tokenize_stage`, reused for the same corpus and tokenizer (config or
    the champion's, with ``champion``).

    Encoding is deterministic, so with ``champion`` the night that trained that very tokenizer on
    this corpus (the champion's own night, re-run after a later stage failed) has the same result.
    """

    def trained_it() -> memos.Memo | None:
        assert champion is not None
        memo = memos.recall(cfg.tracking.catalog_url, tokenize_key(cfg, corpus))
        file = champion.files[TOKENIZER_FILE]["sha256"]
        return (
            memo
            if memo is not None and memo.refs["tokenizer"].files[TOKENIZER_FILE]["sha256"] == file
            else None
        )

    return cached(
        cfg,
        run,
        "tokenize",
        tokenize_key(cfg, corpus, champion),
        lambda: stages.tokenize_stage(cfg, run, corpus, champion=champion),
        lambda r: ({"tokenizer": r.tokenizer, "tokens": r.tokens}, {"stats": r.stats}),
        lambda m: TokenizeResult(m.refs["tokenizer"], m.refs["tokens"], m.result["stats"]),
        trained_it if champion is not None else None,
    )


def parent_of_night(
    cfg: Config,
    run: StageRun,
    tokens: ArtifactRef,
    tokenizer: ArtifactRef,
    resolve: Callable[[], ArtifactRef | None],
) -> ArtifactRef | None:
    """The model tonight's pretraining starts from (``resolve()``: ``train.init``), chosen once per night.

    The choice is memoised under the identity of the pretraining it starts (tokens, tokenizer, model
    and train config, seed), so the same night run again continues from the same parent even after
    its own candidate became the champion: a night that failed at ``deploy`` then finds its
    pretraining in the cache instead of training again from its own result. A night with other data,
    config or seed chooses again. Forcing pretrain (``night.cache: false``, ``night.rerun``) chooses
    again too; a remembered parent that no longer verifies is forgotten and chosen again.
    """
    config = _pretrain_config(cfg)
    key = stage_key("parent", {"tokens": tokens.sha256, "tokenizer": tokenizer.sha256}, config)
    url = cfg.tracking.catalog_url
    if cfg.night.cached("pretrain"):
        memo = memos.recall(url, key)
        if memo is not None:
            parent = memo.refs.get("parent")
            log.info(
                "pretrain: this night chose its parent before (run %s): %s",
                memo.mlflow_run_id or memo.run_id,
                parent.sha256[:16] if parent is not None else "scratch",
            )
            return parent
    parent = resolve()
    memos.remember(
        url,
        key,
        "parent",
        run_id=run.catalog_run_id,
        mlflow_run_id=run.mlflow_run_id,
        refs={"parent": parent},
        result={"init": cfg.train.init},
    )
    return parent


def pretrain(
    cfg: Config,
    run: StageRun,
    tokens: ArtifactRef,
    tokenizer: ArtifactRef,
    parent: ArtifactRef | None = None,
    replay: ArtifactRef | None = None,
) -> stages.PretrainStageResult:
    """:func:`training.stages.pretrain_stage`, reused for the same tokens, parent, model and train config.

    Its checkpoints live under ``runs/pretrain-<key>``: one identity for the memo and the work in
    progress, so a retried or re-run night resumes the same training.
    """
    key = pretrain_key(cfg, tokens, tokenizer, parent, replay)
    workdir = nightshift_home() / "runs" / f"pretrain-{key[:16]}"
    return cached(
        cfg,
        run,
        "pretrain",
        key,
        lambda: stages.pretrain_stage(
            cfg, run, tokens, tokenizer, workdir=workdir, parent=parent, replay=replay
        ),
        lambda r: (
            {"model": r.model},
            {"metrics": r.metrics, "samples": r.samples, "model_uri": r.model_uri},
        ),
        lambda m: stages.PretrainStageResult(
            m.refs["model"], m.result["metrics"], m.result["samples"], m.result["model_uri"]
        ),
    )


def _encode_rlhf(r: RLHFStageResult) -> tuple[dict[str, ArtifactRef | None], dict[str, Any]]:
    rest = {
        "metrics": r.metrics,
        "model_uri": r.model_uri,
        "verdict": r.verdict.to_dict() if r.verdict is not None else None,
    }
    return {"model": r.model, "preferences": r.preferences}, rest


def _decode_rlhf(m: memos.Memo) -> RLHFStageResult:
    verdict = m.result.get("verdict")
    return RLHFStageResult(
        model=m.refs["model"],
        metrics=m.result["metrics"],
        preferences=m.refs.get("preferences"),
        model_uri=m.result.get("model_uri"),
        verdict=Verdict.from_dict(verdict) if verdict is not None else None,
    )


def rlhf_stage(
    cfg: Config, run: StageRun, stage: str, key: str, build: Callable[[], RLHFStageResult]
) -> RLHFStageResult:
    """An RLHF stage (sft, reward, ppo, dpo, grpo), reused for the same inputs and config."""
    return cached(cfg, run, stage, key, build, _encode_rlhf, _decode_rlhf)
