"""The legacy CSV space format (name,min,max,scale) and JSON/YAML space files."""

from __future__ import annotations

from pathlib import Path

import pytest

from pbtune.errors import InvalidConfigError
from pbtune.server.space_files import load_space_file, parse_space_csv
from pbtune.space import Float


def test_csv_rows_become_float_domains_with_their_scale() -> None:
    space = parse_space_csv("name,min,max,scale\nlr, 1e-4 ,0.1,log\n\n# a comment\nmomentum,0.5,0.99,LINEAR\n")
    assert space["lr"] == Float(1e-4, 0.1, log=True)
    assert space["momentum"] == Float(0.5, 0.99, log=False)
    assert list(space) == ["lr", "momentum"]


@pytest.mark.parametrize("header", [
    "hyperparameter,min_value,max_value,search_scale",  # the older server/client project's header
    "Hyperparameter, Min_Value, Max_Value, Search_Scale",
    "name,min_value,max,search_scale",
])
def test_csv_with_the_older_projects_header(header: str, tmp_path: Path) -> None:
    path = tmp_path / "space.csv"
    path.write_text(f"{header}\nlr,1e-4,0.1,log\nmomentum,0.5,0.99,linear\n")
    space = load_space_file(str(path))
    assert {name: space[name] for name in space} == {"lr": Float(1e-4, 0.1, log=True),
                                                     "momentum": Float(0.5, 0.99, log=False)}


def test_csv_header_columns_may_come_in_any_order() -> None:
    space = parse_space_csv("search_scale,hyperparameter,max_value,min_value\nlog,lr,0.1,0.001\n")
    assert space["lr"] == Float(0.001, 0.1, log=True)


def test_a_header_row_after_data_rows_is_data_and_an_error() -> None:
    with pytest.raises(InvalidConfigError) as caught:
        parse_space_csv("lr,0.001,0.1,log\nhyperparameter,min_value,max_value,search_scale\n")
    assert caught.value.field == "min" and caught.value.where == "space.csv line 2"


def test_csv_without_header_is_accepted() -> None:
    assert parse_space_csv("wd,0,0.01,linear")["wd"] == Float(0.0, 0.01)


@pytest.mark.parametrize(
    ("text", "field", "fragment"),
    [
        ("lr,1e-4,0.1,cubic", "scale", "['linear', 'log']"),
        ("lr,1e-4,0.1", "row", "4 columns"),
        ("lr,abc,0.1,log", "min", "a number"),
        ("lr,0.1,nan,log", "max", "a finite number"),
        ("lr,0.1,0.01,linear", "min", "smaller than high"),
        ("lr,0,1,log", "min", "> 0 when log=True"),
        ("lr,1,2,log\nlr,0,1,linear", "name", "unique"),
        (",0,1,linear", "name", "non-empty"),
        ("name,min,max,scale\n", "rows", "at least one"),
    ],
)
def test_bad_csv_is_a_clear_error_naming_the_column(text: str, field: str, fragment: str) -> None:
    with pytest.raises(InvalidConfigError) as caught:
        parse_space_csv(text, where="space.csv")
    assert caught.value.field == field
    assert fragment in str(caught.value)
    if field not in ("rows",):
        assert "line" in caught.value.where


def test_json_and_yaml_space_files_and_run_configs(tmp_path: Path) -> None:
    (tmp_path / "s.json").write_text('{"lr": {"type": "float", "low": 0.001, "high": 0.1, "log": true},'
                                     ' "act": ["relu", "tanh"]}')
    (tmp_path / "s.yaml").write_text("name: r\nspace:\n  layers: {type: int, low: 1, high: 4}\n")
    assert set(load_space_file(str(tmp_path / "s.json"))) == {"lr", "act"}
    assert load_space_file(str(tmp_path / "s.yaml"))["layers"].to_config()["high"] == 4


@pytest.mark.parametrize(("name", "text", "field"), [
    ("s.txt", "lr,0,1,linear", "config_path"),
    ("missing.csv", None, "config_path"),
    ("s.json", "{nope", "json"),
    ("s.json", "[1, 2]", "space"),
    ("s.yaml", "lr: {type: float, low: 0}", "high"),
])
def test_bad_space_files_are_clear_errors(tmp_path: Path, name: str, text: str | None, field: str) -> None:
    path = tmp_path / name
    if text is not None:
        path.write_text(text)
    with pytest.raises(InvalidConfigError) as caught:
        load_space_file(str(path))
    assert caught.value.field == field
