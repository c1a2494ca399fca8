"""Progress of long work: log lines every N steps off a terminal, a live bar on one."""

from __future__ import annotations

import logging

import pytest

from training.progress import Progress, format_duration


def test_a_log_line_every_n_steps_with_figures_and_eta(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="training.progress"), Progress("pretrain", 25, every=10) as p:
        for step in range(1, 26):
            p.update(step, train_loss=4.0 - step / 10, tokens_per_s=3912.4)
    lines = [r.getMessage() for r in caplog.records]
    assert [line.split(" (")[0] for line in lines] == [f"pretrain: step {s}/25" for s in (1, 10, 20, 25)]
    assert lines[1].startswith("pretrain: step 10/25 (40%) train_loss 3 tokens_per_s 3,912 ETA ")
    assert "ETA" not in lines[0]  # no rate yet after one update
    assert lines[-1].endswith("tokens_per_s 3,912")  # done: no ETA left


def test_unknown_total_counts_and_closes_with_the_final_count(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="training.progress"):
        with Progress("ingest", None, unit="docs", every=1000) as p:
            for _ in range(2500):
                p.advance(kept=1)
    assert [r.getMessage().split(" kept")[0] for r in caplog.records] == [
        "ingest: docs 1",
        "ingest: docs 1,000",
        "ingest: docs 2,000",
        "ingest: docs 2,500",
    ]


def test_on_a_terminal_it_is_a_live_bar(capsys: pytest.CaptureFixture[str]) -> None:
    with Progress("pretrain", 4, live=True) as p:
        for step in range(1, 5):
            p.update(step, train_loss=2.5)
    err = capsys.readouterr().err
    assert "pretrain" in err and "4/4" in err and "train_loss 2.5" in err and "ETA" in err


def test_durations_read_as_a_person_would() -> None:
    assert [format_duration(s) for s in (4.2, 64, 3725)] == ["4s", "1m04s", "1h02m"]
