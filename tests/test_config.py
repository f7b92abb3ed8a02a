"""Typed configs refuse bad values, and YAML config files fail clearly (adps.config)."""

from __future__ import annotations

import argparse
import dataclasses
import math
import re
from pathlib import Path

import pytest

import adps.cli
from adps.cli.options import add_training_arguments, configs_from_args
from adps.config import (
    ModelConfig,
    SynthesisConfig,
    TrainConfig,
    from_dict,
    load_config_file,
    parse_size,
    size_text,
    to_dict,
)
from adps.errors import AdpsError

CLASSES = {"model": ModelConfig, "train": TrainConfig}

# (section, field, a value the field must refuse); every field of both configs appears at least
# once (checked by test_the_table_covers_every_field).
BAD = [
    ("model", "backbone", ""),
    ("model", "backbone", 5),
    ("model", "image_size", 0),
    ("model", "image_size", 256.0),
    ("model", "image_size", "256"),
    ("model", "image_size", True),
    ("model", "k", 0),
    ("model", "k", 2.5),
    ("model", "split_after_stages", (3,)),
    ("model", "split_after_stages", (1, 1)),
    ("model", "split_after_stages", (True,)),
    ("model", "split_after_stages", 1),
    ("model", "fusion", "foo"),
    ("model", "fusion", None),
    ("model", "mask_type", "cos"),
    ("model", "variant", "none"),
    ("model", "psm_widths", (64, 32, 16)),
    ("model", "psm_widths", (64, 32, 16, 0)),
    ("model", "psm_widths", (64, 32, 16, 16.0)),
    ("model", "psm_widths", 64),
    ("model", "student_init", "Random"),
    ("model", "sigma", -1.0),
    ("model", "sigma", math.nan),
    ("model", "sigma", "4"),
    ("model", "cos_eps", 0.0),
    ("model", "psm_init", "xavier"),
    ("model", "psm_output_stride", 3),
    ("model", "psm_output_stride", True),
    ("model", "psm_output_stride", 2.0),
    ("model", "image_score", "mean"),
    ("model", "score_top_share", 0.0),
    ("model", "score_top_share", 1.5),
    ("model", "image_decision", "sum"),
    ("model", "decision_psm_weight", -0.5),
    ("model", "prior", "patchcore"),
    ("model", "memory_size", 0),
    ("model", "memory_neighbors", 0),
    ("model", "psm_boost", -1.0),
    ("model", "prior_exponent", 0.0),
    ("model", "prior_exponent", 1.5),
    ("model", "image_size", (256, 0)),
    ("model", "image_size", (256, 256, 256)),
    ("model", "image_size", (256.0, 128)),
    ("model", "tiling", 1),
    ("model", "tile_overlap", 1.0),
    ("model", "tile_overlap", -0.1),
    ("model", "tile_scale", 0),
    ("model", "prior_fusion", "middle"),
    ("train", "epochs", 0),
    ("train", "epochs", 1.5),
    ("train", "epochs", True),
    ("train", "batch_size", 0),
    ("train", "lr", -1),
    ("train", "lr", 0.0),
    ("train", "lr", math.inf),
    ("train", "lr", math.nan),
    ("train", "lr", "1e-4"),
    ("train", "lr_milestones", (0.9, 0.8)),
    ("train", "lr_milestones", (0.8, 0.8)),
    ("train", "lr_milestones", (0.0, 0.5)),
    ("train", "lr_milestones", (0.5, 1.5)),
    ("train", "lr_milestones", 0.8),
    ("train", "lr_gamma", 0.0),
    ("train", "lr_gamma", 1.5),
    ("train", "lr_schedule", "onecycle"),
    ("train", "warmup", 1.0),
    ("train", "warmup", -0.1),
    ("train", "lr_final_share", 1.5),
    ("train", "time_budget", 0),
    ("train", "time_budget", "20m"),
    ("train", "lambda_seg", -1.0),
    ("train", "focal_gamma", -0.5),
    ("train", "distill_loss", "coisne"),
    ("train", "mse_margin", -1.0),
    ("train", "steps_per_epoch", 0),
    ("train", "steps_per_epoch", 2.5),
    ("train", "micro_batch_pixels", 0),
    ("train", "micro_batch_pixels", 2.5),
    ("train", "seed", -1),
    ("train", "seed", 1.0),
    ("train", "rotate_prob", 1.1),
    ("train", "texture_dir", 5),
    ("train", "texture_dir", ""),
    ("train", "synthesis", 5),
    ("train", "synthesis", {"anomaly_prob": 0.5}),
    ("train", "checkpoint_every", 0),
    ("train", "checkpoint_minutes", -1.0),
    ("train", "calibration_holdout", 1.0),
    ("train", "calibration_holdout", -0.1),
    ("train", "target_false_alarm_rate", 0.0),
    ("train", "target_false_alarm_rate", 1.0),
    ("train", "amp", 1),
    ("train", "amp", "yes"),
    ("train", "channels_last", None),
]


def test_the_table_covers_every_field():
    for section, cls in CLASSES.items():
        fields = {f.name for f in dataclasses.fields(cls)}
        assert fields == {name for s, name, _ in BAD if s == section}


@pytest.mark.parametrize(
    ("section", "name", "value"), BAD, ids=[f"{s}.{n}={v!r}" for s, n, v in BAD]
)
def test_every_field_refuses_a_bad_value(section, name, value):
    with pytest.raises(AdpsError, match=re.escape(f"{section}.{name}")):
        CLASSES[section](**{name: value})


def test_messages_say_field_value_and_what_is_allowed():
    with pytest.raises(AdpsError) as info:
        ModelConfig(fusion="foo")
    assert str(info.value) == "model.fusion: 'foo' is not one of ['wmb', 'diff', 'conv']"
    with pytest.raises(AdpsError) as info:
        TrainConfig(lr=-1)
    assert str(info.value) == "train.lr: must be > 0, got -1"
    with pytest.raises(
        AdpsError, match=r"train\.distill_loss: 'coisne' is not one of \['cosine', 'mse'\]"
    ):
        TrainConfig(distill_loss="coisne")
    with pytest.raises(AdpsError, match=r"model\.psm_widths\[3\]: must be > 0, got 0$"):
        ModelConfig(psm_widths=(64, 32, 16, 0))
    with pytest.raises(AdpsError, match=r"model\.k: must be an integer >= 1, got 2\.0$"):
        ModelConfig(k=2.0)
    with pytest.raises(AdpsError, match=r"1\.0e-4"):  # PyYAML 1.1 reads `lr: 1e-4` as a string
        TrainConfig(lr="1e-4")


def test_good_edge_values_pass():
    TrainConfig(
        lr=1,
        lr_gamma=1,
        lr_milestones=(),
        calibration_holdout=0.0,
        steps_per_epoch=1,
        checkpoint_minutes=0,
        rotate_prob=1,
        lambda_seg=0,
        texture_dir="textures",
    )
    TrainConfig(lr_milestones=(0.5, 1))
    ModelConfig(image_size=32, k=2, psm_widths=(8, 8, 8, 8), sigma=0)
    ModelConfig(image_size=1024, k=8, split_after_stages=(1,))  # 16 x 8^2
    ModelConfig(image_size=128, k=2, split_after_stages=(2, 1))  # 16 x 2^3


def test_nested_synthesis_errors_name_the_path():
    with pytest.raises(AdpsError, match=r"train\.synthesis\.anomaly_prob"):
        from_dict(TrainConfig, {"synthesis": {"anomaly_prob": 2.0}})
    with pytest.raises(AdpsError, match=r"train\.synthesis\.perlin_scale_min"):
        SynthesisConfig(perlin_scale_min=4, perlin_scale_max=2)
    with pytest.raises(AdpsError, match=r"train\.synthesis"):
        from_dict(TrainConfig, {"synthesis": 5})


# ------------------------------------------------------------------------------------ geometry


@pytest.mark.parametrize(
    ("size", "k", "splits", "step", "nearest"),
    [
        (100, 8, (), 128, "128"),  # nothing valid below 100
        (300, 8, (), 128, "256, 384"),
        (200, 2, (1,), 64, "192, 256"),  # 16 x 2^2
        (256, 32, (), 512, "512"),
        (64, 2, (1, 2), 128, "128"),  # 16 x 2^3
    ],
)
def test_geometry_error_names_the_nearest_valid_sizes(size, k, splits, step, nearest):
    with pytest.raises(AdpsError) as info:
        ModelConfig(image_size=size, k=k, split_after_stages=splits)
    message = str(info.value)
    assert message.startswith(f"model.image_size: {size} must be divisible by {step} ")
    assert message.endswith(f"nearest valid sizes: {nearest}")
    for valid in nearest.split(", "):
        ModelConfig(image_size=int(valid), k=k, split_after_stages=splits)


def test_non_square_geometry_names_the_nearest_valid_sizes_per_side():
    with pytest.raises(AdpsError) as info:
        ModelConfig(image_size=(640, 250), k=8)
    assert str(info.value).startswith(
        "model.image_size: 640x250 must be divisible by 128 on each side "
    )
    assert str(info.value).endswith("nearest valid sizes: 640x128, 640x256")
    assert ModelConfig(image_size=(640, 256)).size == (640, 256)
    assert ModelConfig(image_size=(256, 256)).image_size == 256  # one spelling per size
    assert from_dict(ModelConfig, {"image_size": [384, 128]}).size == (384, 128)  # YAML list


@pytest.mark.parametrize(
    ("text", "size"),
    [("256", 256), ("640x256", (640, 256)), ("128X128", 128), ("96 x 64", (96, 64))],
)
def test_parse_size(text, size):
    assert parse_size(text) == size
    assert parse_size(size_text(size)) == size


@pytest.mark.parametrize("text", ["", "256x", "x256", "0", "2x3x4", "-5", "25.6"])
def test_parse_size_refuses_bad_text(text):
    with pytest.raises(AdpsError, match="HEIGHTxWIDTH"):
        parse_size(text)


# ------------------------------------------------------------------------------ dict round trip


def test_defaults_construct_and_round_trip():
    for cls in (ModelConfig, TrainConfig, SynthesisConfig):
        assert from_dict(cls, to_dict(cls())) == cls()
    model = ModelConfig(image_size=1024, split_after_stages=(1,), psm_widths=(8, 8, 8, 8))
    assert from_dict(ModelConfig, to_dict(model)) == model
    train = TrainConfig(lr_milestones=(0.5,), synthesis=SynthesisConfig(texture_ops=0))
    assert from_dict(TrainConfig, to_dict(train)) == train


def test_from_dict_refuses_unknown_fields_and_non_mappings():
    with pytest.raises(AdpsError, match=r"model: unknown fields \['fusoin'\]"):
        from_dict(ModelConfig, {"fusoin": "wmb"})
    with pytest.raises(AdpsError, match=r"^model: expected a mapping"):
        from_dict(ModelConfig, 5)
    with pytest.raises(AdpsError, match=r"^train: expected a mapping"):
        from_dict(TrainConfig, ["epochs", 3])


# ------------------------------------------------------------------------------------ YAML files


def _yaml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("5\n", "expected a mapping"),  # a bare number: was a TypeError
        ("- model\n- train\n", "expected a mapping"),
        ("just text\n", "expected a mapping"),
        ("optim:\n  lr: 1.0\n", r"unknown sections \['optim'\]"),
        ("model: 5\n", "section 'model:' must be a mapping"),
        ("train: [1, 2]\n", "section 'train:' must be a mapping"),
        ("model: [\n", "cannot read"),
        ("model:\n\tk: 4\n", "cannot read"),  # tabs are a YAML syntax error
    ],
)
def test_bad_files_raise_adps_errors_naming_the_file(tmp_path, text, match):
    path = _yaml(tmp_path, text)
    with pytest.raises(AdpsError, match=match) as info:
        load_config_file(path)
    assert info.value.path == str(path)


def test_missing_file(tmp_path):
    with pytest.raises(AdpsError, match="cannot read") as info:
        load_config_file(tmp_path / "absent.yaml")
    assert info.value.path == str(tmp_path / "absent.yaml")


@pytest.mark.parametrize("text", ["", "# nothing\n", "model:\ntrain:\n"])
def test_empty_file_or_sections_give_empty_sections(tmp_path, text):
    assert load_config_file(_yaml(tmp_path, text)) == {"model": {}, "train": {}}


def _args(*argv: str) -> argparse.Namespace:
    return _args.parser.parse_args(list(argv))


_args.parser = argparse.ArgumentParser()
add_training_arguments(_args.parser)


GOOD = """\
model:
  image_size: 128
  k: 4
  fusion: diff
  psm_widths: [64, 32, 16, 16]
train:
  epochs: 3
  lr: 1.0e-3
  lr_milestones: [0.5, 0.75]
  amp: false
  synthesis:
    anomaly_prob: 0.7
"""


def test_a_good_file_reaches_the_configs(tmp_path):
    # on top of the paper's recipe, so everything the file does not name is a dataclass default
    model, train = configs_from_args(
        _args("--recipe", "paper", "--config", str(_yaml(tmp_path, GOOD)))
    )
    assert model == ModelConfig(image_size=128, k=4, fusion="diff", psm_widths=(64, 32, 16, 16))
    assert train == TrainConfig(
        epochs=3,
        lr=1e-3,
        lr_milestones=(0.5, 0.75),
        amp=False,
        synthesis=SynthesisConfig(anomaly_prob=0.7),
    )
    assert isinstance(train.lr_milestones, tuple) and isinstance(model.psm_widths, tuple)


def test_flags_override_the_file(tmp_path):
    path = _yaml(tmp_path, GOOD)
    model, train = configs_from_args(
        _args("--config", str(path), "--epochs", "7", "--image-size", "256", "--fusion", "conv")
    )
    assert (model.image_size, model.k, model.fusion) == (256, 4, "conv")
    assert (train.epochs, train.lr) == (7, 1e-3)


def test_recipes_then_file_then_flags(tmp_path):
    from adps.config import RECIPES

    paper_model, paper_train = configs_from_args(_args("--recipe", "paper"))
    assert paper_model == ModelConfig() and paper_train == TrainConfig()  # the paper's defaults
    assert (paper_model, paper_train) == (
        ModelConfig.from_recipe("paper"),
        TrainConfig.from_recipe("paper"),
    )
    fast = RECIPES["fast"]
    model, train = configs_from_args(_args("--recipe", "fast"))
    assert all(getattr(model, k) == v for k, v in fast.model.items())
    assert all(getattr(train, k) == v for k, v in fast.train.items())
    assert (model, train) == (ModelConfig.from_recipe("fast"), TrainConfig.from_recipe("fast"))
    assert configs_from_args(_args()) == (model, train)  # the CLI's default recipe
    path = _yaml(tmp_path, "train:\n  lr: 2.0e-4\n")
    model, train = configs_from_args(
        _args(
            "--recipe", "fast", "--config", str(path), "--warmup", "0.2", "--psm-output-stride", "1"
        )
    )
    assert train.lr == 2e-4 and train.warmup == 0.2 and model.psm_output_stride == 1
    assert train.lr_schedule == "cosine"  # what neither the file nor a flag named


def test_from_recipe_takes_changes_and_refuses_unknown_names():
    assert TrainConfig.from_recipe("fast", lr=1e-3) == dataclasses.replace(
        TrainConfig.from_recipe("fast"), lr=1e-3
    )
    with pytest.raises(AdpsError, match="recipe 'quick' is not one of"):
        ModelConfig.from_recipe("quick")


def test_configs_are_frozen():
    model, train = ModelConfig(), TrainConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        model.psm_boost = 4.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        train.lr = 1.0
    assert dataclasses.replace(model, psm_boost=4.0).psm_boost == 4.0 and model.psm_boost == 2.0


def _parse_shown(text: str, like: object) -> object:
    """A default as the help prints it, read back as a value of the config field's type."""
    if text in ("on", "off"):
        return text == "on"
    if text == "none":
        return None
    if isinstance(like, bool):
        raise AssertionError(f"{text!r} for a boolean field")
    if isinstance(like, (int, tuple)) and not isinstance(like, float):
        return parse_size(text) if "x" in text else int(text)
    if isinstance(like, float):
        return float(text)
    return text


def test_train_help_states_the_default_recipes_values():
    """Every training flag's help names the value the command uses when the flag is absent:
    each flag's entry of `adps train --help`, as argparse renders it, is read back and compared
    with the configs the CLI builds from no flags at all."""
    from adps.cli.options import _FIELDS

    parser = adps.cli.build_parser()
    train_parser = parser._subparsers._group_actions[0].choices["train"]
    formatter = train_parser._get_formatter()
    entries = {
        a.dest: " ".join(formatter._format_action(a).split())
        for a in train_parser._actions
        if a.option_strings
    }
    model, train = configs_from_args(_args())
    configs = {"model": model, "train": train}
    checked = 0
    for dest, (section, name) in _FIELDS.items():
        assert dest in entries, f"{dest} is not in the help"
        # defaults that depend on the data, or on the device
        if dest in ("textures", "steps_per_epoch", "micro_batch_pixels"):
            continue
        shown = re.search(r"default (?:bf16 autocast )?([^\s;)]+)", entries[dest])
        assert shown, f"{dest}'s help names no default: {entries[dest]!r}"
        value = getattr(configs[section], name)
        assert _parse_shown(shown.group(1).rstrip(":"), value) == value, (dest, shown.group(1))
        checked += 1
    assert checked >= 25
    # the paper's values, which the CLI does not use, are named in --recipe's help alone
    assert "default 32" not in entries["batch_size"] and "1e-4" not in entries["lr"]


def test_time_budget_and_precision_flags():
    _, train = configs_from_args(_args("--time-budget", "1h30m", "--no-amp"))
    assert train.time_budget == 5400 and train.amp is False
    _, default = configs_from_args(_args())
    assert default.time_budget is None and default.amp is True
    with pytest.raises(SystemExit):
        _args("--time-budget", "soon")


def test_bad_value_in_a_file_fails(tmp_path):
    path = _yaml(tmp_path, "train:\n  distill_loss: coisne\n")
    with pytest.raises(AdpsError, match=r"train\.distill_loss: 'coisne'"):
        configs_from_args(_args("--config", str(path)))


def test_cli_reports_a_bad_field_before_opening_the_data(tmp_path, capsys):
    path = _yaml(tmp_path, "model:\n  fusion: foo\n")
    code = adps.cli.main(
        [
            "train",
            "--config",
            str(path),
            "--data",
            str(tmp_path / "no-data"),
            "--out",
            str(tmp_path / "out"),
            "--no-progress",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert "model.fusion: 'foo' is not one of ['wmb', 'diff', 'conv']" in err
    assert "no-data" not in err
    assert not (tmp_path / "out").exists()
