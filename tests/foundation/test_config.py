"""Typed configs: defaults <- YAML (with `base`) <- key=value; errors name the source and the key."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from omniseq.cli import run
from omniseq.config import ConfigError, load_config, save_config


@dataclass
class Inner:
    lr: float = 1e-3


@dataclass
class Cfg:
    steps: int = 10
    name: str = "x"
    inner: Inner = field(default_factory=Inner)
    shares: dict = field(default_factory=dict)


def test_layers_merge_in_order(tmp_path):
    (tmp_path / "base.yaml").write_text("steps: 5\ninner: {lr: 0.5}\n")
    (tmp_path / "stage.yaml").write_text("base: base.yaml\nname: s1\nshares: {speech: 0.125}\n")
    cfg = load_config(Cfg, tmp_path / "stage.yaml", ["inner.lr=0.25"])
    assert cfg == Cfg(steps=5, name="s1", inner=Inner(lr=0.25), shares={"speech": 0.125})


@pytest.mark.parametrize(
    "yaml_text, overrides, match",
    [
        ("stepz: 3\n", [], r"stage.yaml: key 'stepz'"),
        ("steps: many\n", [], r"key 'steps'"),
        ("", ["inner.lrr=1"], r"command line: key 'inner.lrr'"),
        ("", ["steps"], r"expected key=value"),
        ("", ["shares={text:[1]}"], r"override 'shares=\{text:\[1\]\}': the value is not valid YAML"),
        ("- a\n- b\n", [], r"expected a mapping"),
        ("steps: [1\n", [], r"not valid YAML"),
        ("base: nowhere.yaml\n", [], r"not found"),
    ],
)
def test_bad_configs_name_the_source_and_key(tmp_path, yaml_text, overrides, match):
    (tmp_path / "stage.yaml").write_text(yaml_text)
    with pytest.raises(ConfigError, match=match):
        load_config(Cfg, tmp_path / "stage.yaml", overrides)


def test_base_loop_is_caught(tmp_path):
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(ConfigError, match="loops"):
        load_config(Cfg, tmp_path / "a.yaml")


def test_saved_config_loads_back(tmp_path):
    cfg = Cfg(steps=7, shares={"text": 1.0})
    assert load_config(Cfg, save_config(cfg, tmp_path / "resolved.yaml")) == cfg


def test_cli_prints_user_errors_without_traceback(capsys):
    def main(argv):
        raise ConfigError("stage.yaml: key 'stepz': not in Cfg")

    with pytest.raises(SystemExit) as e:
        run(main, [])
    assert e.value.code == 2 and capsys.readouterr().err.strip() == "error: stage.yaml: key 'stepz': not in Cfg"


@pytest.mark.parametrize(
    "override, key, value",
    [
        ("name=no", "name", "no"),  # YAML 1.1: False
        ("name=0123", "name", "0123"),  # YAML 1.1: octal 83
        ("name=a #b", "name", "a #b"),  # YAML: a comment
        ("name=", "name", ""),  # YAML: null, refused for a str
        ("name='quoted'", "name", "quoted"),
        ("steps=010", "steps", 10),  # YAML 1.1: octal 8
    ],
)
def test_overrides_of_str_and_int_fields_take_the_text_as_written(override, key, value):
    assert getattr(load_config(Cfg, None, [override]), key) == value
