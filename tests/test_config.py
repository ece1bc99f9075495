from __future__ import annotations

import json
from pathlib import Path

import pytest

from pbtune.config import RunConfig, load_config
from pbtune.errors import InvalidConfigError
from pbtune.strategies import Tournament

SPACE = {"lr": {"type": "float", "low": 0.001, "high": 0.1, "log": True}}


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"population": 1}, "population"),
        ({"population": "8"}, "population"),
        ({"budget": 0}, "budget"),
        ({"workers": 0}, "workers"),
        ({"mode": "maximize"}, "mode"),
        ({"exploit": {"name": "truncation", "quantile": 0.7}}, "quantile"),
        ({"exploit": "roulette"}, "name"),
        ({"explore": "mutate"}, "name"),
        ({"space": {"lr": {"type": "float", "low": 0, "high": 1, "log": True}}}, "low"),
        ({"space": {"lr": {"type": "beta"}}}, "type"),
        ({"storage": "pbt.db"}, "storage"),
        ({"name": "a/b"}, "name"),
        ({"keep_checkpoints": 0}, "keep_checkpoints"),
        ({"trainable": "no_colon"}, "trainable"),
        ({"lease_seconds": -1}, "lease_seconds"),
        # issue 14 item 10
        ({"lease_seconds": float("inf")}, "lease_seconds"),
        ({"lease_seconds": float("nan")}, "lease_seconds"),
        ({"explore": {"name": "perturb", "factors": [0.8, float("inf")]}}, "factors"),
        ({"explore": {"name": "perturb_or_resample", "factors": [float("nan")]}}, "factors"),
        ({"name": "n" * 101}, "name"),
        ({"name": "\u00e9" * 101}, "name"),
        ({"name": "ab\ncd"}, "name"),
        ({"storage": "mysqlx://user:secret@host/db"}, "storage"),
        ({"storage": "foo://x"}, "storage"),
    ],
)
def test_bad_fields_are_named(overrides: dict, field: str) -> None:
    settings = {"name": "x", "space": SPACE, **overrides}
    with pytest.raises(InvalidConfigError) as info:
        RunConfig(**settings)
    assert info.value.field == field
    assert str(info.value).startswith(f"`{field}` of `")


def test_unknown_key_in_a_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"name": "x", "space": SPACE, "populaton": 4}))
    with pytest.raises(InvalidConfigError, match="`populaton`"):
        load_config(str(path))


def test_yaml_config_with_relative_trainable(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(
        "name: y\ntrainable: model.py:Net\nexploit: tournament\nspace:\n  lr: {type: float, low: 0.1, high: 1}\n"
    )
    config = load_config(str(path), workers=3)
    assert config.trainable == f"{tmp_path}/model.py:Net"
    assert config.workers == 3
    assert isinstance(config.exploit, Tournament)


def test_round_trip_through_dict() -> None:
    config = RunConfig(name="x", space=SPACE, exploit={"name": "truncation", "quantile": 0.25},
                       explore={"name": "perturb", "factors": [0.5, 2.0]})
    again = RunConfig.from_dict(config.to_dict())
    assert again.to_dict() == config.to_dict()
    assert again.explore.factors == (0.5, 2.0)


def test_invalid_json_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text("{name: ")
    with pytest.raises(InvalidConfigError, match="valid JSON"):
        load_config(str(path))


def test_invalid_yaml_is_a_clear_error_with_its_position(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\nspace: {lr: [1, 2\npopulation: 4\n")
    with pytest.raises(InvalidConfigError, match=r"`yaml` of .* must be valid YAML \(.*line \d+"):
        load_config(str(path))


def test_unknown_storage_scheme_never_echoes_the_password() -> None:
    with pytest.raises(InvalidConfigError) as info:
        RunConfig(name="x", space=SPACE, storage="mysqlx://user:hunter2@host/db")
    assert "hunter2" not in str(info.value) and "mysqlx://" in str(info.value)


def test_a_name_at_the_limit_is_taken() -> None:
    assert RunConfig(name="n" * 100, space=SPACE).name == "n" * 100


def test_store_refuses_an_unknown_url_scheme_with_a_clear_error() -> None:
    from pbtune.store import open_store

    with pytest.raises(InvalidConfigError, match="`storage` of `population store`"):
        open_store("foo://nowhere/db")
