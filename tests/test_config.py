"""Typed config: YAML, dotted overrides, validation, auto keys."""

import pytest

from simclr.config import (
    Config,
    ConfigError,
    all_keys,
    apply_overrides,
    config_to_dict,
    load_config,
    resolve,
    save_config,
    validate,
)


def test_defaults_valid_and_keys_listed():
    validate(Config())
    keys = all_keys()
    assert "loss.temperature" in keys and "augment.color_strength" in keys and "optim.eta" in keys


def test_overrides_are_typed():
    cfg = apply_overrides(Config(), [("loss.temperature", "0.2"), ("train.batch_size", "512"), ("augment.blur", "false"),
                                     ("augment.crop_scale", "[0.2, 1.0]"), ("model.cifar_stem", "auto"), ("train.epochs", "1e2")])
    assert cfg.loss.temperature == 0.2 and cfg.train.batch_size == 512 and cfg.augment.blur is False
    assert cfg.augment.crop_scale == (0.2, 1.0) and cfg.model.cifar_stem is None and cfg.train.epochs == 100
    assert Config().loss.temperature == 0.1  # the defaults were not mutated


def test_unknown_key_suggests_closest():
    with pytest.raises(ConfigError, match=r"unknown config key 'loss.temprature'.*did you mean 'loss.temperature'"):
        apply_overrides(Config(), [("loss.temprature", "0.1")])


@pytest.mark.parametrize("key,value,msg", [
    ("train.batch_size", "abc", "must be an integer"),
    ("train.batch_size", "2.5", "must be an integer"),
    ("loss.temperature", "warm", "must be a number"),
    ("augment.blur", "maybe", "true or false"),
    ("augment.crop_scale", "[1, 2, 3]", "pair"),
])
def test_bad_types(key, value, msg):
    with pytest.raises(ConfigError, match=msg):
        apply_overrides(Config(), [(key, value)])


@pytest.mark.parametrize("key,value,msg", [
    ("loss.temperature", "0", "temperature must be > 0"),
    ("loss.temperature", "-1", "temperature must be > 0"),
    ("train.batch_size", "1", "batch_size must be >= 2"),
    ("optim.base_lr", "-0.1", "base_lr must be >= 0"),
    ("model.width", "0", "width must be > 0"),
    ("model.arch", "resnet19", "model.arch 'resnet19' is unknown"),
    ("optim.name", "adam", "optim.name 'adam' is unknown"),
    ("augment.gray_p", "1.2", "gray_p must be <= 1"),
    ("train.epochs", "0", "epochs must be >= 1"),
])
def test_invalid_values(key, value, msg):
    cfg = apply_overrides(Config(), [(key, value)])
    with pytest.raises(ConfigError, match=msg):
        validate(cfg)


def test_yaml_round_trip(tmp_path):
    cfg = apply_overrides(Config(), [("loss.temperature", "0.3"), ("model.arch", "resnet18")])
    save_config(cfg, tmp_path / "c.yaml")
    back = load_config(tmp_path / "c.yaml")
    assert config_to_dict(back) == config_to_dict(cfg)


def test_yaml_errors(tmp_path):
    (tmp_path / "bad.yaml").write_text("loss:\n  temprature: 0.2\n")
    with pytest.raises(ConfigError, match="did you mean 'loss.temperature'"):
        load_config(tmp_path / "bad.yaml")
    (tmp_path / "sec.yaml").write_text("losses:\n  temperature: 0.2\n")
    with pytest.raises(ConfigError, match="unknown config section 'losses'.*'loss'"):
        load_config(tmp_path / "sec.yaml")
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_resolve_auto_keys():
    small = resolve(Config(), 32)
    assert (small.augment.color_strength, small.augment.blur_p, small.model.cifar_stem) == (0.5, 0.0, True)
    assert small.optim.base_lr == 1.0 and small.optim.weight_decay == 1e-4
    large = resolve(Config(), 224)
    assert (large.augment.color_strength, large.augment.blur_p, large.model.cifar_stem) == (1.0, 0.5, False)
    assert large.optim.base_lr == 0.3 and large.optim.weight_decay == 1e-6
    pinned = resolve(apply_overrides(Config(), [("augment.color_strength", "0.8"), ("model.cifar_stem", "false")]), 32)
    assert pinned.augment.color_strength == 0.8 and pinned.model.cifar_stem is False


def test_recipes_load_and_validate():
    from pathlib import Path

    import re

    from simclr.config import COMMAND_CONFIGS

    recipes = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))
    assert len(recipes) >= 7
    for r in recipes:
        # each recipe says the command it is for in its usage line: "... simclr finetune --config configs/..."
        usage = re.search(r"simclr (\w+) --config configs/" + re.escape(r.name), r.read_text())
        assert usage, f"{r.name} has no usage line"
        cfg = load_config(r, cls=COMMAND_CONFIGS[usage.group(1)])
        if usage.group(1) != "pretrain":  # what the usage line adds on the command line
            cfg.data.path, cfg.data.val_path = "train", "val"
            if hasattr(cfg, "encoder"):
                cfg.encoder.checkpoint = "RUN"
        validate(cfg)


def test_semi_hard_mining_needs_a_loss_that_has_it():
    from simclr.config import Config, ConfigError, config_from_flat, validate

    validate(config_from_flat({"loss.name": "margin_triplet", "loss.semi_hard": True}, Config()))
    with pytest.raises(ConfigError, match="loss.semi_hard applies to nt_logistic and margin_triplet"):
        validate(config_from_flat({"loss.semi_hard": True}, Config()))
