"""The model card reads data, training, RLHF, evaluation and lineage from the records."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from catalog.registry import ModelVersionInfo
from catalog.tracking import Tracker
from gpt.model_io import save_model
from training.eval.evaluate import evaluate
from training.eval.gates import check_gates
from training.eval.model_card import model_card

from .conftest import LMData, Models, eval_config, train


@pytest.mark.slow
def test_card_of_a_fine_tuned_model_walks_its_lineage(
    lm_data: LMData, models: Models, mlflow_server: str, catalog_url: str, tmp_path: Path
) -> None:
    tuned = save_model(
        train(lm_data.tokens, 3, seed=5), lm_data.tokenizer.path / "tokenizer.json", root=tmp_path
    )
    tracker = Tracker(
        tracking_uri=mlflow_server, experiment=f"card-{uuid.uuid4().hex[:8]}", catalog_url=catalog_url
    )
    with tracker.pipeline("nightly", config={}) as pipe:
        with pipe.stage("tokenize") as st:
            st.use(lm_data.corpus)
            st.produce(lm_data.tokenizer, log_files=False)
            st.produce(lm_data.tokens, log_files=False)
        with pipe.stage("pretrain", config={"train": {"max_steps": 80, "lr": 0.003}, "seed": 0}) as st:
            st.use(lm_data.tokens)
            st.use(lm_data.tokenizer)
            st.produce(models.strong, log_files=False)
        with pipe.stage("sft") as st:
            st.use(models.strong)
            st.produce(tuned, log_files=False)
    cfg = eval_config(red_team=False, bias_probes=False, max_task_items=0)
    report = evaluate(tuned, models.strong, cfg=cfg, heldout=lm_data.tokens)
    verdict = check_gates(report, cfg)
    version = ModelVersionInfo(
        name="nightshift-gpt",
        version="4",
        source="models:/m-0",
        run_id=None,
        model_id="m-0",
        status="READY",
        aliases=("challenger",),
        tags={"nightshift.previous_champion": "3"},
    )

    card = model_card(tuned, catalog_url=catalog_url, version=version, report=report, verdict=verdict)
    assert card.startswith("# Model card: nightshift-gpt v4")
    assert "`models:/nightshift-gpt/4` (aliases: `challenger`)" in card and "previous champion: v3" in card
    assert f"model artifact: `{tuned.sha256}`" in card
    assert "| layers | 2 |" in card and "| context (tokens) | 64 |" in card
    assert (
        f"corpus `{lm_data.corpus.sha256[:16]}`" in card and f"tokens `{lm_data.tokens.sha256[:16]}`" in card
    )
    assert "train.max_steps 80" in card and "train.lr 0.003" in card
    rlhf = card.split("## RLHF")[1].split("##")[0]
    assert "- sft run" in rlhf
    evaluation = card.split("## Evaluation")[1].split("## Lineage")[0]
    assert "Held-out perplexity" in evaluation and verdict.summary() in evaluation
    lineage = card.split("## Lineage")[1]
    assert [s for s in ("sft", "pretrain", "tokenize") if f"| {s} |" in lineage] == [
        "sft",
        "pretrain",
        "tokenize",
    ]
    assert lineage.index("| sft |") < lineage.index("| pretrain |") < lineage.index("| tokenize |")

    pretrained = model_card(models.strong, catalog_url=catalog_url)
    assert (
        "None: no SFT, reward-model, PPO, DPO or GRPO run" in pretrained
        and "Not evaluated yet." in pretrained
    )


def test_card_without_a_catalog_says_what_is_unknown(models: Models) -> None:
    card = model_card(models.weak)
    assert card.startswith(f"# Model card: model {models.weak.sha256[:12]}")
    assert "No lineage recorded" in card and "Unknown: no lineage recorded." in card
    assert "## Intended use and limitations" in card
