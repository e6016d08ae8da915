"""Every config field is an option reachable from the command line and from a TOML recipe, or
says why it is not one."""

import json
from dataclasses import MISSING, fields

import pytest

from model import ModelConfig
from training.__main__ import main, parse_args, train_config_from_args
from training.options import NOT_AN_OPTION, as_flags, given_options, option_fields
from training.synthetic import SynthConfig
from training.train import TrainConfig

# Read from the data, or given through other options: nothing else may lack a flag.
NOT_OPTIONS = {
    TrainConfig: {"model"},
    ModelConfig: {"in_channels", "num_keypoints", "keypoint_names"},
    SynthConfig: set(),
}


# Where the rule below would give a value the config refuses.
OTHER_VALUES = {"min_sessions": 3}  # at most --sessions (4)


def _other_value(f):
    """A valid value other than the field's default, of the field's type."""
    if f.name in OTHER_VALUES:
        return OTHER_VALUES[f.name]
    default = f.default if f.default is not MISSING else f.default_factory()
    if "choices" in f.metadata:
        return next(c for c in f.metadata["choices"] if c != default)
    if isinstance(default, bool):
        return not default
    if isinstance(default, tuple):
        return (8, 8)
    if isinstance(default, int):
        return 2 * default + 1  # odd, as the kernel size must be
    if isinstance(default, float):
        return default / 2 if default else 0.25
    if isinstance(default, str):
        return default + "x"
    assert default is None, f"{f.name}: no rule for a value of {default!r}"
    return {"int": 3, "float": 1.5, "str": "x"}[f.type.split(" ")[0]]


def _toml(value) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple):
        return json.dumps(list(value))
    return json.dumps(value)


def _options(cls):
    return [(cls, f) for f in option_fields(cls)]


def test_a_field_is_an_option_or_says_why_not():
    for cls, expected in NOT_OPTIONS.items():
        reasons = {f.name for f in fields(cls) if NOT_AN_OPTION in f.metadata}
        assert reasons == expected, cls.__name__
        assert len(option_fields(cls)) == len(fields(cls)) - len(expected)


def _landed(cls, args):
    """The config that ``args`` build, as a dict of its options."""
    if cls is SynthConfig:
        return vars(SynthConfig(**given_options(SynthConfig, args)))
    config = train_config_from_args(args)
    return config.model if cls is ModelConfig else vars(config)


@pytest.mark.parametrize(
    "cls, f",
    [*_options(TrainConfig), *_options(ModelConfig), *_options(SynthConfig)],
    ids=lambda x: getattr(x, "name", getattr(x, "__name__", "")),
)
def test_every_option_reaches_its_config_from_a_flag_and_from_a_recipe(cls, f, tmp_path):
    value = _other_value(f)
    if cls is SynthConfig:
        base = ["synth", "--out", "x.npz"]
    else:
        base = ["train", "--data", "x.npz", "--out", "run"]
    from_flag = _landed(cls, parse_args([*base, *as_flags({f.name: value})]))
    assert from_flag[f.name] == value

    if cls is SynthConfig:
        return  # synth takes no recipe
    for key in (f.name.replace("_", "-"), f.name):
        recipe = tmp_path / "recipe.toml"
        recipe.write_text(f"{key} = {_toml(value)}\n")
        from_recipe = _landed(cls, parse_args([*base, "--config", str(recipe)]))
        assert from_recipe[f.name] == value, key


def test_options_left_out_take_the_configs_defaults():
    args = parse_args(["train", "--data", "x.npz", "--out", "run"])
    assert train_config_from_args(args) == TrainConfig()
    assert vars(args).keys().isdisjoint(f.name for f in fields(TrainConfig))


def test_grad_clip_is_set_from_the_command_line():
    args = parse_args(["train", "--data", "x.npz", "--out", "run", "--grad-clip", "1.5"])
    assert train_config_from_args(args).grad_clip == 1.5


def test_as_flags_writes_what_the_parser_reads():
    values = {"conv_channels": (8, 16), "scale_channels": True, "fine_keypoints": False}
    args = parse_args(["train", "--data", "x", "--out", "y", *as_flags(values)])
    assert train_config_from_args(args).model == values


@pytest.mark.parametrize(
    "recipe, message",
    [
        ("epochs = 1.5", "epochs: expected int, got 1.5"),
        ("conv-channels = [8, true]", "conv-channels: expected a list of integers"),
        ("scale-channels = 'yes'", "scale-channels: expected bool, got 'yes'"),
        ("max_minute = 3", "unknown option(s) max_minute"),
    ],
)
def test_a_recipe_value_of_the_wrong_type_is_refused_naming_its_key(
    recipe, message, tmp_path, capsys
):
    path = tmp_path / "recipe.toml"
    path.write_text(recipe + "\n")
    with pytest.raises(SystemExit) as exit:
        parse_args(["train", "--config", str(path), "--data", "x", "--out", "y"])
    assert exit.value.code == 2 and message in capsys.readouterr().err


def test_a_recipe_may_write_a_value_as_the_flags_text(tmp_path):
    path = tmp_path / "recipe.toml"
    path.write_text('conv-channels = "8,16"\nepochs = "3"\n')
    config = train_config_from_args(
        parse_args(["train", "--config", str(path), "--data", "x", "--out", "y"])
    )
    assert config.model["conv_channels"] == (8, 16) and config.epochs == 3


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--augment-stretch", "0.5"], r"augment_stretch must be in [0, 0.5), got 0.5"),
        (["--augment-flip", "1.5"], "augment_flip must be in [0, 1], got 1.5"),
        (
            ["--folds", "5", "--test-fraction", "0.2"],
            "folds and test_fraction both choose the test set: give one",
        ),
        (["--folds", "5", "--fold", "5"], "fold must be in [0, 5), got 5"),
        (["--val-fraction", "1"], "val_fraction must be in [0, 1), got 1.0"),
        (["--reconstruct-width", "0"], "reconstruct_width must be at least 1 sample, got 0"),
    ],
)
def test_the_configs_checks_are_the_command_lines_errors(flags, message, tmp_path, capsys):
    """A value the dataclass refuses is one line naming the field and exit code 2, before any
    data is read."""
    argv = ["train", "--data", str(tmp_path / "absent.npz"), "--out", str(tmp_path), *flags]
    assert main(argv) == 2
    assert capsys.readouterr().err.strip() == f"error: {message}"


def test_a_model_override_must_be_a_model_option():
    with pytest.raises(ValueError, match="model: not options of the model: in_channels"):
        TrainConfig(model={"in_channels": 3})


def test_help_shows_each_default_once(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--grad-clip GRAD_CLIP largest norm of the gradient" in text
    assert "(default: 5.0)" in text and "(default: 32,64,128)" in text
    assert "--fine-keypoints, --no-fine-keypoints" in text
