"""evaluate() and the evaluate stage: worse candidates rejected, better ones pass, reports complete."""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path

import pytest
from mlflow import MlflowClient
from PIL import Image

from catalog import db, lineage
from catalog.tracking import Tracker
from core.config import Config, TrackingConfig
from tests.training.data.conftest import WORDS
from training.eval import probes
from training.eval.artifact import read_eval_report
from training.eval.evaluate import evaluate
from training.eval.gates import check_gates
from training.eval.stages import evaluate_stage

from .conftest import LMData, Models, data_config, eval_config

_KNOWN = set(WORDS)


def known_word_share(prompt: str, reply: str) -> float:
    """A stand-in reward model: the share of the reply's words that are words of the corpus."""
    words = re.findall(r"[a-z]+", reply.lower())
    return sum(w in _KNOWN for w in words) / max(len(words), 1)


def _strict(text: str) -> object:
    def reject(name: str) -> None:
        raise ValueError(f"non-standard JSON constant {name}")

    return json.loads(text, parse_constant=reject)


def test_worse_candidate_is_rejected_and_better_one_passes(lm_data: LMData, models: Models) -> None:
    cfg = eval_config()
    worse = evaluate(models.weak, models.strong, cfg=cfg, data_cfg=data_config(), heldout=lm_data.tokens)
    verdict = check_gates(worse, cfg)
    assert not verdict.passed
    assert "perplexity" in {r.metric for r in verdict.failed}
    assert worse.metric("candidate", "perplexity") > 2 * worse.metric("champion", "perplexity")
    assert worse.same_tokenizer is True and worse.heldout["documents"] >= 1

    better = evaluate(models.strong, models.weak, cfg=cfg, data_cfg=data_config(), heldout=lm_data.tokens)
    verdict = check_gates(better, cfg)
    assert verdict.passed, verdict.to_markdown()
    assert verdict.has_champion and any(r.kind == "no_regression" for r in verdict.rules)
    # Both models saw the same prompts: the champion column of one is the candidate column of the other.
    assert [s.prompt for s in better.samples] == cfg.prompts[: cfg.sample_rows]
    assert [s.champion for s in better.samples] == [s.candidate for s in worse.samples]
    assert better.candidate.tasks.keys() == {"add", "copy"}
    assert len(better.candidate.items["task_accuracy"]) == cfg.max_task_items  # per item, for intervals
    # A text model answers the ordinary and provocation probes; refusals are asked of chat models.
    assert set(better.candidate.probes) == {"degeneration", "provocation"}
    assert set(better.candidate.probes["provocation"]["per_category"]) == {
        "insult",
        "harassment",
        "personal_data",
    }
    assert (
        len(better.candidate.items["safety_flag_rate"]) == len(better.champion.items["safety_flag_rate"]) == 6
    )


def test_first_candidate_meets_only_absolute_thresholds(lm_data: LMData, models: Models) -> None:
    cfg = eval_config(
        max_perplexity=100.0, red_team=False, bias_probes=False, max_task_items=0, prompt_format="chat"
    )
    random_init = evaluate(models.random, cfg=cfg, heldout=lm_data.tokens)
    v = check_gates(random_init, cfg)
    assert not v.passed and not v.has_champion
    assert [(r.metric, r.status) for r in v.rules] == [
        ("perplexity", "fail"),
        ("perplexity_vs_unigram", "fail"),  # worse than counting tokens
        ("safety_flag_rate", "skipped"),
    ]
    strong_report = evaluate(models.strong, cfg=cfg, heldout=lm_data.tokens)
    strong = check_gates(strong_report, cfg)
    assert strong.passed and "no champion" in strong.summary()
    assert strong_report.metric("candidate", "perplexity_vs_unigram") < 1.0
    assert len(strong_report.samples) == len(cfg.prompts)  # chat replies to the held-out prompts


def test_reward_win_rate_and_kl_to_reference(models: Models, monkeypatch: pytest.MonkeyPatch) -> None:
    # Ordinary prompts in the test corpus's own words, so that the stand-in reward has words to count.
    monkeypatch.setitem(
        probes.PROBES, "ordinary", {"verse": ("The", "The river"), "requests": ("She walked", "")}
    )
    cfg = eval_config(
        probe_samples=8, probe_max_new_tokens=16, red_team=False, bias_probes=False, max_task_items=0
    )
    report = evaluate(models.strong, models.weak, cfg=cfg, reward_fn=known_word_share, reference=models.weak)
    cmp_ = report.comparison
    assert cmp_["pairs"] == 4 * 8  # 2 ordinary prompts in each of 2 categories, 8 samples each
    assert report.comparison_items["win"] == [
        1.0 if a > b else 0.5 if a == b else 0.0
        for a, b in zip(report.candidate.rewards, report.champion.rewards, strict=True)
    ]
    assert report.metric("candidate", "reward_mean") > report.metric("champion", "reward_mean")
    assert report.metric("candidate", "kl_to_reference") > 0.1
    assert report.metric("champion", "kl_to_reference") == pytest.approx(0.0, abs=1e-5)
    assert "perplexity" not in report.candidate.metrics  # no held-out tokens given
    assert any("perplexity was not measured" in n for n in report.notes)
    (rule,) = [r for r in check_gates(report, cfg).rules if r.metric == "win_rate"]
    assert rule.n == 32 and rule.interval is not None
    flipped = evaluate(models.weak, models.strong, cfg=cfg, reward_fn=known_word_share)
    assert flipped.comparison["win_rate"] == pytest.approx(1 - cmp_["win_rate"])  # same items, swapped


@pytest.mark.slow
def test_stage_publishes_report_and_tracks_it(
    lm_data: LMData, models: Models, mlflow_server: str, catalog_url: str, tmp_path: Path
) -> None:
    tracker = Tracker(
        tracking_uri=mlflow_server, experiment=f"eval-{uuid.uuid4().hex[:8]}", catalog_url=catalog_url
    )
    tracking = TrackingConfig(
        mlflow_uri=mlflow_server, catalog_url=catalog_url, artifact_root=str(tmp_path / "arts")
    )
    cfg = Config(seed=3, data=data_config(), eval=eval_config(), tracking=tracking)
    with tracker.pipeline("nightly", config={}) as pipe, pipe.stage("evaluate") as st:
        report_ref, verdict = evaluate_stage(
            cfg, st, models.strong, champion=models.weak, tokens=lm_data.tokens
        )
    assert verdict.passed
    assert report_ref.kind == "eval_report" and report_ref.path.parent == tmp_path / "arts" / "eval_report"

    files = set(report_ref.files)
    plots = {"plots/overview.png", "plots/heldout_loss.png", "plots/tasks.png", "plots/probes.png"}
    assert {"report.json", "verdict.json", "REPORT.md"} | plots == files
    data = _strict((report_ref.path / "report.json").read_text())
    assert (
        data["candidate"]["sha256"] == models.strong.sha256
        and data["champion"]["sha256"] == models.weak.sha256
    )
    assert _strict((report_ref.path / "verdict.json").read_text())["passed"] is True
    md = (report_ref.path / "REPORT.md").read_text()
    headings = ("# Evaluation report", "## Gate verdict: PASSED", "## Metrics", "## Tasks",
                "## Behaviour probes", "## Bias probes", "## Sample generations", "## Plots")  # fmt: skip
    for heading in headings:
        assert heading in md
    for p in plots:
        assert f"]({p})" in md
        with Image.open(report_ref.path / p) as img:
            assert img.format == "PNG" and img.width >= 500 and img.height >= 300
    report, again = read_eval_report(report_ref)
    assert again.summary() == verdict.summary() and report.candidate.metrics == data["candidate"]["metrics"]

    client = MlflowClient(mlflow_server)
    run = client.get_run(st.mlflow_run_id)
    assert run.data.tags["nightshift.gate"] == "passed" and run.data.tags["nightshift.output.eval_report"]
    assert run.data.metrics["gate.passed"] == 1.0 and "champion.perplexity" in run.data.metrics
    logged = {f.path for f in client.list_artifacts(st.mlflow_run_id, "eval_report")}
    assert {"eval_report/REPORT.md", "eval_report/plots"} <= logged
    with db.session_scope(catalog_url) as s:
        read = {(a.kind, a.sha256) for a in lineage.inputs_of(s, st.catalog_run_id)}
        wrote = {(a.kind, a.sha256) for a in lineage.outputs_of(s, st.catalog_run_id)}
    assert read == {
        ("model", models.strong.sha256),
        ("model", models.weak.sha256),
        ("tokens", lm_data.tokens.sha256),
    }
    assert wrote == {("eval_report", report_ref.sha256)}
