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


# -- files and overrides read values alike ----------------------------------------------------------
@dataclass
class Src:
    path: str = "p"
    share: float = 1.0


@dataclass
class Typed:
    steps: int = 10
    lr: float = 1.0
    seed: int | None = None
    tag: str | None = "t"
    paths: dict[str, str] = field(default_factory=dict)
    weights: dict[str, float] = field(default_factory=dict)
    items: list[str] = field(default_factory=list)
    srcs: list[Src] = field(default_factory=list)
    inner: Inner = field(default_factory=Inner)
    extra: dict = field(default_factory=dict)  # untyped, as StageConfig.model


def _nested_yaml(key: str, text: str) -> str:
    """("a.b", "x") -> the YAML of {a: {b: x}}, as a stage file nests keys."""
    parts = key.split(".")
    return (
        "".join(f"{'  ' * i}{p}:\n" for i, p in enumerate(parts[:-1]))
        + f"{'  ' * (len(parts) - 1)}{parts[-1]}: {text}\n"
    )


def _get(cfg, key: str):
    for part in key.split("."):
        cfg = cfg[part] if isinstance(cfg, dict) else getattr(cfg, part)
    return cfg


@pytest.mark.parametrize(
    "key, text, value",
    [
        ("steps", "010", 10),  # YAML 1.1: octal 8
        ("steps", "1_000", 1000),  # as Python reads it
        ("lr", "010", 10.0),
        ("lr", "1e-5", 1e-5),  # YAML 1.1 in a file: the string "1e-5"
        ("seed", "010", 10),  # int | None
        ("seed", "null", None),
        ("tag", "no", "no"),  # str | None; YAML 1.1: False
        ("tag", "0123", "0123"),  # YAML 1.1: octal 83
        ("tag", "null", None),
        ("paths.image", "0755", "0755"),  # dict[str, str]; YAML 1.1: 493
        ("paths.image", "no", "no"),
        ("items", "[no, 0123]", ["no", "0123"]),  # list[str]
        ("srcs", "[{path: no, share: 010}]", [Src("no", 10.0)]),  # list of dataclasses
        ("inner.lr", "1e-5", 1e-5),
        ("name", "no", "no"),
        ("name", "'quoted'", "quoted"),
        ("extra.z_loss", "1e-5", 1e-5),  # untyped: YAML's reading, the same in both
        ("extra.flag", "no", False),
    ],
)
def test_files_and_overrides_read_a_value_alike(tmp_path, key, text, value):
    schema = Cfg if key == "name" else Typed
    (tmp_path / "stage.yaml").write_text(_nested_yaml(key, text))
    from_file = _get(load_config(schema, tmp_path / "stage.yaml"), key)
    from_override = _get(load_config(schema, None, [f"{key}={text}"]), key)
    assert from_file == from_override == value
    assert type(from_file) is type(from_override) is type(value)


def test_stage_file_model_z_loss_is_a_float(tmp_path):
    # the line docs/training.md and StageConfig.model's comment show; YAML 1.1 alone reads 1e-5 as a string
    from omniseq.train.config import StageConfig

    (tmp_path / "stage.yaml").write_text("model: {qk_norm: true, z_loss: 1e-5}\n")
    assert load_config(StageConfig, tmp_path / "stage.yaml").model == {"qk_norm": True, "z_loss": 1e-5}
    assert load_config(StageConfig, None, ["model={qk_norm: true, z_loss: 1e-5}"]).model == {
        "qk_norm": True,
        "z_loss": 1e-5,
    }


def test_stage_data_seed_override_is_decimal():
    from omniseq.train.config import StageConfig

    assert load_config(StageConfig, None, ["data.seed=010"]).data.seed == 10


def test_a_config_file_of_real_keys_is_unchanged(tmp_path):
    # typed values written the usual way read as before: the rules above only change YAML 1.1's surprises
    (tmp_path / "stage.yaml").write_text(
        "steps: 300\nlr: 0.5\nseed: 7\ntag: runs/x\npaths: {image: runs/tok/image}\nweights: {image: 0.5}\n"
        "items: [a, b]\nsrcs: [{path: runs/s, share: 0.25}]\ninner: {lr: 3.0e-4}\nextra: {qk_norm: true}\n"
    )
    assert load_config(Typed, tmp_path / "stage.yaml") == Typed(
        steps=300, lr=0.5, seed=7, tag="runs/x", paths={"image": "runs/tok/image"}, weights={"image": 0.5},
        items=["a", "b"], srcs=[Src("runs/s", 0.25)], inner=Inner(lr=3e-4), extra={"qk_norm": True},
    )  # fmt: skip


# -- containers of the wrong shape ------------------------------------------------------------------
@pytest.mark.parametrize(
    "yaml_text, overrides, match",
    [
        ("srcs:\n  path: a\n  share: 1.0\n", [], r"stage.yaml: key 'srcs': expected a list, got a mapping"),
        ("", ["srcs={path: a}"], r"command line: key 'srcs': expected a list, got a mapping"),
        ("items: 5\n", [], r"stage.yaml: key 'items': expected a list, got int"),
        ("weights: [1]\n", [], r"stage.yaml: key 'weights': expected a mapping, got a list"),
        ("inner: [1, 2]\n", [], r"stage.yaml: key 'inner': expected a mapping of Inner keys, got a list"),
        ("weights: {image: [0.5]}\n", [], r"stage.yaml: key 'weights.image': expected float, got a list"),
        ("", ["weights.image.x=1"], r"command line: key 'weights.image'"),
        ("items: [[1]]\n", [], r"stage.yaml: key 'items.0': expected str, got a list"),
        ("", ["items=[[1]]"], r"command line: key 'items.0': expected str, got a list"),
        ("srcs: [5]\n", [], r"stage.yaml: key 'srcs.0': expected a mapping of Src keys, got int"),
        ("srcs: [{path: {a: 1}}]\n", [], r"stage.yaml: key 'srcs.0.path': expected str, got a mapping"),
    ],
)
def test_wrong_container_shapes_name_the_source_and_key(tmp_path, yaml_text, overrides, match):
    (tmp_path / "stage.yaml").write_text(yaml_text)
    with pytest.raises(ConfigError, match=match):
        load_config(Typed, tmp_path / "stage.yaml", overrides)


def test_stage_sources_written_without_dashes_name_the_file_and_key(tmp_path):
    from omniseq.train.config import StageConfig

    (tmp_path / "stage.yaml").write_text("data:\n  sources:\n    path: runs/demo/shards/x\n    share: 1.0\n")
    with pytest.raises(ConfigError, match=r"stage.yaml: key 'data.sources': expected a list, got a mapping"):
        load_config(StageConfig, tmp_path / "stage.yaml")


def test_list_item_overrides_set_that_item(tmp_path):
    (tmp_path / "stage.yaml").write_text("srcs: [{path: a, share: 0.5}, {path: b}]\n")
    cfg = load_config(
        Typed, tmp_path / "stage.yaml", ["srcs.1.share=0.25", "srcs[0].path=0123", "items=[x]", "items.0=y"]
    )
    assert cfg.srcs == [Src("0123", 0.5), Src("b", 0.25)] and cfg.items == ["y"]


@pytest.mark.parametrize(
    "override, match",
    [
        (
            "srcs.2.share=1",
            r"command line: key 'srcs.2.share': 'srcs' is a list of 2 item\(s\), expected an index in \[0, 2\)",
        ),
        ("srcs.x.share=1", r"'srcs' is a list of 2 item\(s\), expected an index .* got 'x'"),
        ("items.0=a", r"command line: key 'items.0': 'items' is a list of 0 item\(s\)"),
    ],
)
def test_list_item_overrides_outside_the_list_are_refused(tmp_path, override, match):
    (tmp_path / "stage.yaml").write_text("srcs: [{path: a}, {path: b}]\n")
    with pytest.raises(ConfigError, match=match):
        load_config(Typed, tmp_path / "stage.yaml", [override])


# -- base, encoding, interpolation ------------------------------------------------------------------
@pytest.mark.parametrize(
    "yaml_text, match",
    [
        ("base: 5\n", r"stage.yaml: key 'base': expected a file name \(a string\), got 5"),
        ("base: [x.yaml]\n", r"stage.yaml: key 'base': expected a file name \(a string\), got \['x.yaml'\]"),
        ("base: nowhere.yaml\n", r"stage.yaml: key 'base': \S*nowhere.yaml not found"),
    ],
)
def test_bad_base_names_the_file_and_key(tmp_path, yaml_text, match):
    (tmp_path / "stage.yaml").write_text(yaml_text)
    with pytest.raises(ConfigError, match=match):
        load_config(Cfg, tmp_path / "stage.yaml")


def test_a_file_that_is_not_utf8_is_named(tmp_path):
    (tmp_path / "base.yaml").write_bytes(b"\xff\xfe steps: 3\n")
    (tmp_path / "stage.yaml").write_text("base: base.yaml\n")
    with pytest.raises(ConfigError, match=r"base.yaml: not UTF-8 text"):
        load_config(Cfg, tmp_path / "stage.yaml")


def test_a_bad_interpolation_names_the_source_that_wrote_it(tmp_path):
    (tmp_path / "base.yaml").write_text("name: ${rot}/x\n")
    (tmp_path / "stage.yaml").write_text("base: base.yaml\nsteps: 3\n")
    with pytest.raises(ConfigError, match=r"base.yaml: key 'name': .*'rot'.* \(resolving \S*stage.yaml with its bases"):
        load_config(Cfg, tmp_path / "stage.yaml")
    with pytest.raises(ConfigError, match=r"^command line: key 'name': .*'nope'"):
        load_config(Cfg, tmp_path / "stage.yaml", ["name=${nope}"])


def test_saved_strings_that_look_like_other_values_load_back(tmp_path):
    cfg = Typed(tag="1e-5", items=["no", "0123", "2024-05-01"], extra={"z": "1e-5", "n": "no", "i": "010", "e": ""})
    assert load_config(Typed, save_config(cfg, tmp_path / "resolved.yaml")) == cfg


@pytest.mark.parametrize("text", ["0x10", "1:30", "0o17", "true", "1.5"])
def test_an_int_field_takes_decimal_digits_only(tmp_path, text):
    """YAML 1.1 reads 0x10 as 16 and 1:30 (base 60) as 90; a step count written so is a mistake to name."""
    (tmp_path / "stage.yaml").write_text(f"steps: {text}\n")
    with pytest.raises(ConfigError, match=r"stage.yaml: key 'steps'"):
        load_config(Typed, tmp_path / "stage.yaml")
    with pytest.raises(ConfigError, match=r"command line: key 'steps'"):
        load_config(Typed, None, [f"steps={text}"])
