from __future__ import annotations

import pytest
import yaml

from core.config import PRESETS, Config, ConfigError, describe_fields, load_config, parse_cli_overrides


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_loads_and_is_consistent(preset):
    cfg = load_config(preset)
    assert cfg.preset == preset
    assert cfg.model.n_embd % cfg.model.n_head == 0
    assert cfg.model.vocab_size >= cfg.data.vocab_size


def test_cli_and_dict_overrides_agree():
    a = load_config(
        "tiny", ["--data.vocab_size", "1024", "--model.vocab_size=1024", "--data.near_dedup", "false"]
    )
    b = load_config("tiny", {"data.vocab_size": 1024, "model.vocab_size": "1024", "data.near_dedup": False})
    assert a.data.vocab_size == b.data.vocab_size == 1024
    assert a.data.near_dedup is b.data.near_dedup is False
    assert a.to_dict() == b.to_dict()


def test_list_override_from_cli():
    cfg = load_config("tiny", ["--data.sources", "[a.txt, 'b/*.txt']"])
    assert cfg.data.sources == ["a.txt", "b/*.txt"]


def test_every_problem_is_listed_in_one_error():
    with pytest.raises(ConfigError) as exc:
        load_config(
            "tiny",
            {
                "model.n_head": 3,  # 32 not divisible by 3
                "data.vocab_size": "many",  # wrong type
                "data.nonsense": 1,  # unknown key
                "train.min_lr": 1.0,  # above lr
            },
        )
    problems = exc.value.problems
    assert len(problems) == 4, problems
    text = str(exc.value)
    for needle in ("model.n_embd", "data.vocab_size", "data.nonsense", "train.min_lr"):
        assert needle in text


def test_cross_section_problem():
    with pytest.raises(ConfigError, match="model.vocab_size"):
        load_config("tiny", {"data.vocab_size": 4096})


def test_unknown_preset_names_the_known_ones():
    with pytest.raises(ConfigError, match="known presets: .*small"):
        load_config("huge")


def test_bad_cli_tokens_are_reported():
    with pytest.raises(ConfigError) as exc:
        parse_cli_overrides(["data.vocab_size", "--data.min_chars"])
    assert len(exc.value.problems) == 2


def test_saved_config_reloads_identically(tmp_path):
    cfg = load_config("small", {"data.min_chars": 10})
    path = cfg.save(tmp_path / "config.yaml")
    again = load_config(path)
    assert again.model_dump(exclude={"preset"}) == cfg.model_dump(exclude={"preset"})
    assert yaml.safe_load(path.read_text())["data"]["min_chars"] == 10


def test_every_field_has_help_text():
    rows = describe_fields(Config)
    assert len(rows) > 40
    missing = [key for key, _, help_text in rows if not help_text]
    assert not missing, f"fields without help text: {missing}"
