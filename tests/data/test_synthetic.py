"""The synthetic shapes set and dataset specs."""

import pytest
import torch

from simclr.config import DataConfig
from simclr.data import DataError, load_dataset, parse_spec, synthetic_images


def test_synthetic_is_deterministic_and_balanced():
    a, b = synthetic_images(200, seed=3), synthetic_images(200, seed=3)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert a.images.shape == (200, 3, 32, 32) and len(a.classes) == 10
    assert len(torch.unique(a.labels)) == 10
    assert not torch.equal(a.images, synthetic_images(200, seed=4).images)


def test_parse_spec():
    assert parse_spec("cifar10") == ("cifar10", "train")
    assert parse_spec("CIFAR100:test") == ("cifar100", "test")
    assert parse_spec("/some/folder") == ("/some/folder", "")
    with pytest.raises(DataError, match="unknown split"):
        parse_spec("synthetic:val")


def test_load_dataset_synthetic_from_config():
    cfg = DataConfig(synthetic_train=30, synthetic_test=12)
    train, test = load_dataset("synthetic", cfg), load_dataset("synthetic:test", cfg)
    assert len(train) == 30 and len(test) == 12 and train.side == 32  # auto keeps the native side
    assert not torch.equal(train.images[:12], test.images)
    small = load_dataset("synthetic", DataConfig(synthetic_train=30, image_size=16, max_per_class=2))
    assert small.images.shape[1:] == (3, 16, 16) and len(small) <= 20
