import tomllib
from pathlib import Path

import pytest

from alad_train.config import Config, dump_toml, load_config, parse_value
from alad_jax.errors import AladError

ROOT = Path(__file__).resolve().parents[1]


def test_embedded_default_equals_written_out_config():
    assert load_config(ROOT / "configs" / "pos_porttinari.toml") == Config()


def test_every_shipped_config_loads():
    configs = sorted((ROOT / "configs").glob("*.toml"))
    assert len(configs) >= 3
    for path in configs:
        assert load_config(path).task in ("pos", "ner", "qa")


def test_overrides_set_nested_fields_with_types():
    cfg = load_config(None, ["seed=7", "windows=[1,3,5]", "stages.align.lr=3e-4", "data.train=x.conllu",
                             "teacher=bert-base-uncased", "cache_features=false", "stages.head.epochs=2"])
    assert cfg.seed == 7 and cfg.windows == [1, 3, 5]
    assert cfg.stages.align.lr == pytest.approx(3e-4)
    assert cfg.stages.head.epochs == 2.0 and isinstance(cfg.stages.head.epochs, float)
    assert cfg.data.train == "x.conllu" and cfg.teacher == "bert-base-uncased"
    assert cfg.cache_features is False


def test_unknown_key_names_itself_and_suggests():
    with pytest.raises(AladError, match=r"unknown config key 'data.trian'.*'data.train'"):
        load_config(None, ["data.trian=x"])
    with pytest.raises(AladError, match=r"unknown config key 'nonsense'"):
        load_config(None, ["nonsense=1"])


def test_wrong_type_and_bad_windows_are_errors():
    with pytest.raises(AladError, match="'seed' must be int"):
        load_config(None, ["seed=abc"])
    with pytest.raises(AladError, match="odd"):
        load_config(None, ["windows=[2]"])
    with pytest.raises(AladError, match="KEY=VALUE"):
        load_config(None, ["seed"])


def test_bad_config_file_names_the_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("task = \n")
    with pytest.raises(AladError, match="bad.toml is not valid TOML"):
        load_config(bad)
    wrong = tmp_path / "wrong.toml"
    wrong.write_text("[data]\nfromat = 'conll'\n")
    with pytest.raises(AladError, match=r"wrong.toml: unknown config key 'data.fromat'"):
        load_config(wrong)
    with pytest.raises(AladError, match="does not exist"):
        load_config(tmp_path / "missing.toml")


def test_dump_toml_round_trips(tmp_path):
    cfg = load_config(None, ["windows=[1,5]", "data.train=a b.conll", "stages.align.max_minutes=12.5"])
    assert tomllib.loads(dump_toml(cfg))["windows"] == [1, 5]
    path = tmp_path / "resolved.toml"
    path.write_text(dump_toml(cfg))
    assert load_config(path) == cfg


def test_values_are_parsed_as_toml_literals_never_evaluated():
    assert parse_value("[1, 3]") == [1, 3]
    assert parse_value("__import__('os')") == "__import__('os')"
    assert parse_value("runs/x") == "runs/x"


def test_seeds_must_be_distinct_and_non_negative():
    assert load_config(None, ["seeds=[0,1,2]"]).seeds == [0, 1, 2]
    assert load_config(None, []).seeds == []  # one seed (`seed`) stays the default
    for bad in ("seeds=[0,0]", "seeds=[-1]"):
        with pytest.raises(AladError, match="config key 'seeds'"):
            load_config(None, [bad])
