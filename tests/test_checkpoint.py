"""Checkpoints: atomic writes, safe loading, encoder weights."""

import os
import pickle

import pytest
import torch

from simclr.checkpoint import CheckpointError, load_checkpoint, load_encoder, save_checkpoint, save_encoder
from simclr.model.resnet import resnet18


def test_round_trip(tmp_path):
    state = {"model": {"w": torch.randn(3)}, "epoch": 4, "config": {"a": {"b": 1.5}}, "classes": ["x", "y"]}
    save_checkpoint(state, tmp_path / "ck.pt")
    back = load_checkpoint(tmp_path / "ck.pt")
    assert back["epoch"] == 4 and back["classes"] == ["x", "y"]
    torch.testing.assert_close(back["model"]["w"], state["model"]["w"])
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_run_folder_is_accepted(tmp_path):
    save_checkpoint({"epoch": 1}, tmp_path / "checkpoint.pt")
    assert load_checkpoint(tmp_path)["epoch"] == 1
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_checkpoint(tmp_path / "nothing")


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch PWNED_BY_CHECKPOINT",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_code_in_a_checkpoint_does_not_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with open(tmp_path / "evil.pt", "wb") as f:
        pickle.dump({"model": _Evil()}, f)
    with pytest.raises(CheckpointError, match="cannot load"):
        load_checkpoint(tmp_path / "evil.pt")
    assert not (tmp_path / "PWNED_BY_CHECKPOINT").exists()


def test_failed_write_keeps_previous(tmp_path):
    save_checkpoint({"epoch": 1}, tmp_path / "ck.pt")

    class Unsaveable:
        pass

    with pytest.raises(Exception):
        save_checkpoint({"epoch": 2, "bad": Unsaveable(), "t": torch.zeros(1) if False else lambda: 0}, tmp_path / "ck.pt")
    assert load_checkpoint(tmp_path / "ck.pt")["epoch"] == 1
    assert sorted(os.listdir(tmp_path)) == ["ck.pt"]


def test_encoder_safetensors(tmp_path):
    enc = resnet18(width=0.25)
    save_encoder(enc, tmp_path / "e.safetensors", {"arch": "resnet18"})
    sd = load_encoder(tmp_path / "e.safetensors")
    assert sorted(sd) == sorted(enc.state_dict())
    other = resnet18(width=0.25)
    other.load_state_dict(sd)
    for k, v in enc.state_dict().items():
        assert torch.equal(v, other.state_dict()[k])
