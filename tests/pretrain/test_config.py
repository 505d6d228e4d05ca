"""pretrain's one source of settings: flags generated from the dataclasses, per-method
options, named recipes."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest

from common.flags import flag_name
from pretrain.__main__ import config_from_args, get_args_parser
from pretrain.config import PretrainConfig
from pretrain.methods import METHODS, all_option_classes
from pretrain.recipes import RECIPES, recipe_config

REPO = Path(__file__).resolve().parents[2]


def parse(*argv: str) -> PretrainConfig:
    return config_from_args(get_args_parser().parse_args(list(argv)))


def test_every_setting_and_option_has_exactly_one_flag():
    help_text = get_args_parser().format_help()
    names = [f.name for f in fields(PretrainConfig) if f.name != "options"]
    names += [f.name for cls in all_option_classes() for f in fields(cls)]
    for name in set(names):
        assert flag_name(name) in help_text, name


def test_no_flag_means_the_dataclass_default():
    assert parse() == PretrainConfig()
    assert parse("--method", "simsiam") == PretrainConfig(method="simsiam")


def test_flags_reach_the_config_and_the_method_options():
    cfg = parse(
        "--method",
        "care",
        "--epochs",
        "3",
        "--crop-scale",
        "0.3",
        "1.0",
        "--lambda-att",
        "10",
        "--n-blocks",
        "2",
        "--no-channels-last",
        "--proj-dim",
        "64",
    )
    assert (cfg.epochs, cfg.crop_scale, cfg.channels_last) == (3, (0.3, 1.0), False)
    assert (cfg.options.lambda_att, cfg.options.n_blocks, cfg.options.proj_dim) == (10.0, 2, 64)
    assert cfg.options.proj_hidden == 4096  # the method's default fills the rest
    gsg = parse("--method", "byol_gsg", "--gsg-distance", "raw")
    assert gsg.options.gsg_distance == "raw" and gsg.tau_schedule == "constant"


def test_a_flag_of_another_method_is_one_clear_error(tmp_path):
    with pytest.raises(ValueError, match="--method simsiam has no option lambda_att"):
        parse("--method", "simsiam", "--lambda-att", "10")
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "pretrain",
            "--method",
            "simsiam",
            "--lambda-att",
            "10",
            "--output",
            str(tmp_path),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 2
    assert (
        res.stderr.strip().splitlines() == [res.stderr.strip().splitlines()[0]]
        and "has no option lambda_att" in res.stderr
    )


def test_recipes_then_flags():
    cfg = parse("--recipe", "shapes-cpu", "--method", "byol", "--epochs", "2")
    expect = {**RECIPES["shapes-cpu"], "epochs": 2}
    for key, value in expect.items():
        assert getattr(cfg, key) == value, key
    assert cfg.recipe == "shapes-cpu" and cfg.method == "byol"
    small = recipe_config("learning-signal", method="byol")
    assert small.options.proj_hidden == 512 and not hasattr(small.options, "mid_dim")
    care = recipe_config("learning-signal", method="care", options={"lambda_att": 0.0})
    assert (care.options.mid_dim, care.options.lambda_att) == (128, 0.0)
    with pytest.raises(ValueError, match="unknown recipe"):
        recipe_config("imagenet-21k")


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_every_recipe_builds_for_every_method(name):
    for method in METHODS:
        if method != "simsiam" and RECIPES[name].get("batch_size", 2) < 2:
            continue
        cfg = recipe_config(name, method=method)
        assert cfg.method == method and cfg.recipe == name


def test_makefile_uses_the_recipes():
    make = (REPO / "Makefile").read_text()
    assert "--recipe shapes-cpu" in make and "--recipe imagenet" in make
