"""simclr import-official: checkpoints written by the official model code (tests/fixtures/official, made by its
make_fixtures.py from google-research/simclr's tf2/model.py) give the official outputs after conversion."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from simclr.cli import main
from simclr.official import TFCheckpointError, official_state_dicts, read_tf_checkpoint

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "official"
CASES = ["r50", "r50_sk", "r18_cifar", "r18_sk"]


def _official(case):
    o = np.load(FIXTURES / case / "outputs.npz")
    return torch.from_numpy(o["images"]).permute(0, 3, 1, 2), {k: torch.from_numpy(o[k]) for k in ("h", "z", "logits")}


@pytest.mark.parametrize("case", CASES)
def test_converted_runs_give_the_official_outputs(case, tmp_path, capsys):
    """Acceptance check 2: h, the projection head's output and the supervised logits equal the official model's
    on the same images to 1e-4 (activations are of order 1: the fixtures' weights are random, BN statistics too)."""
    from simclr.checkpoint import load_checkpoint, load_run

    from simclr.evaluate.finetune import load_finetuned

    flags = json.loads((FIXTURES / case / "flags.json").read_text())
    selector = flags["ft_proj_selector"]
    assert main(["import-official", str(FIXTURES / case), "--out", str(tmp_path / "run"),
                 "--ft-proj-selector", str(selector)]) == 0
    run = load_run(tmp_path / "run")
    x, ref = _official(case)
    classifier, meta = load_finetuned(tmp_path / "run")
    with torch.no_grad():
        h = run.encoder(x)
        z = run.head(h)
        logits = classifier(x)  # the whole network: encoder, the head layers the classifier reads, classifier
        online = load_checkpoint(tmp_path / "run")["model"]
        if selector == 0:  # a classifier on h is also the run's own linear classifier
            torch.testing.assert_close(h @ online["online.weight"].T + online["online.bias"], logits, rtol=0, atol=1e-5)
        else:
            assert "online.weight" not in online
    for name, ours in (("h", h), ("z", z), ("logits", logits)):
        assert ours.shape == ref[name].shape, name
        torch.testing.assert_close(ours, ref[name], rtol=0, atol=1e-4, msg=name)
    assert (run.meta["sk_ratio"] > 0) == (flags["sk_ratio"] > 0) and run.meta["tf_padding"]
    assert run.meta["arch"] == f"resnet{flags['resnet_depth']}" and run.meta["width"] == flags["width_multiplier"]
    assert run.head.num_layers == flags["num_proj_layers"]
    assert run.image_size == (32 if case == "r18_cifar" else 224)
    assert meta["head_layers"] == selector and meta["classes"][:2] == ["0", "1"]
    assert "imported resnet" in capsys.readouterr().out


def test_a_fine_tuned_v2_checkpoint_needs_its_selector(tmp_path, capsys):
    """r50_sk was fine-tuned from the head's first layer (official --ft_proj_selector=1): imported as if its classifier
    read h, its logits are wrong, and the import says how to do it right; the selector must exist in the head."""
    from simclr.evaluate.finetune import load_finetuned

    assert main(["import-official", str(FIXTURES / "r50_sk"), "--out", str(tmp_path / "wrong")]) == 0
    assert "--ft-proj-selector 1" in capsys.readouterr().out
    x, ref = _official("r50_sk")
    with torch.no_grad():
        assert (load_finetuned(tmp_path / "wrong")[0](x) - ref["logits"]).abs().max() > 1e-2
    assert main(["import-official", str(FIXTURES / "r18_sk"), "--out", str(tmp_path / "r"), "--ft-proj-selector", "2"]) == 2
    assert "has 1 layer(s)" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_the_savedmodel_layout_gives_the_same_network():
    """tf2/run.py's SavedModel stores trainable variables under trainable_variables_list/<i>: the object graph says
    which layer each one is."""
    a = official_state_dicts(FIXTURES / "r18_cifar" / "saved_model")
    b = official_state_dicts(FIXTURES / "r18_cifar")
    assert a.encoder.keys() == b.encoder.keys() and a.head.keys() == b.head.keys()
    assert all(torch.equal(a.encoder[k], b.encoder[k]) for k in b.encoder)
    assert all(torch.equal(a.head[k], b.head[k]) for k in b.head)
    assert torch.equal(a.classifier["weight"], b.classifier["weight"])
    raw = read_tf_checkpoint(FIXTURES / "r18_cifar" / "saved_model")
    assert any(k.startswith("trainable_variables_list/") for k in raw)  # so the mapping really was needed


@pytest.mark.slow
def test_an_imported_run_works_with_the_evaluation_commands(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["import-official", str(FIXTURES / "r18_cifar" / "ckpt-1"), "--out", str(run)]) == 0
    data = ["--train-data", "synthetic", "--test-data", "synthetic:test", "--max-per-class", "8", "--device", "cpu"]
    assert main(["linear", "--checkpoint", str(run), *data, "--solver", "lbfgs", "--json"]) == 0
    assert main(["knn", "--checkpoint", str(run), *data, "--json"]) == 0
    assert main(["embed", "--checkpoint", str(run), "--data", "synthetic", "--max-per-class", "2", "--out", str(tmp_path / "emb")]) == 0
    assert np.load(tmp_path / "emb" / "embeddings.npy").shape == (20, 64)
    assert main(["export", "--checkpoint", str(run), "--format", "safetensors", "--out", str(tmp_path / "e.safetensors")]) == 0
    capsys.readouterr()
    # the folder holds weights, not a training state: resuming it is one line, and it is left as it was
    before = (run / "checkpoint.pt").read_bytes()
    assert main(["pretrain", "--data", "synthetic", "--data.image_size", "32", "--out", str(run), "--resume"]) == 2
    assert "imported from a google-research/simclr checkpoint" in capsys.readouterr().err
    assert (run / "checkpoint.pt").read_bytes() == before
    # and a second import does not replace it without --overwrite
    assert main(["import-official", str(FIXTURES / "r18_sk"), "--out", str(run)]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert main(["import-official", str(FIXTURES / "r18_sk"), "--out", str(run), "--overwrite"]) == 0


def _one_line(capsys):
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_what_is_not_an_official_checkpoint_is_one_line(tmp_path, capsys):
    out = ["--out", str(tmp_path / "run")]
    assert main(["import-official", str(tmp_path / "nothing"), *out]) == 2
    assert "no TensorFlow checkpoint" in _one_line(capsys)
    (tmp_path / "empty").mkdir()
    assert main(["import-official", str(tmp_path / "empty"), *out]) == 2
    assert "holds no TensorFlow checkpoint" in _one_line(capsys)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.index").write_bytes(b"not a table" * 10)
    assert main(["import-official", str(bad), *out]) == 2
    assert "not a TensorFlow checkpoint index" in _one_line(capsys)
    # a download cut short: the data file ends early
    cut = tmp_path / "cut"
    shutil.copytree(FIXTURES / "r18_sk", cut)
    data = cut / "ckpt-1.data-00000-of-00001"
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    assert main(["import-official", str(cut), *out]) == 2
    assert "truncated" in _one_line(capsys)
    data.write_bytes(b"")  # an interrupted download: an empty data file
    assert main(["import-official", str(cut), *out]) == 2
    assert "truncated" in _one_line(capsys)
    (cut / "ckpt-1.data-00000-of-00001").unlink()
    assert main(["import-official", str(cut), *out]) == 2
    assert "is missing" in _one_line(capsys)
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_damaged_bytes_are_caught_by_the_checksums(tmp_path, capsys):
    """One flipped byte anywhere, in a tensor or in the index, stops the import in one line (never wrong weights)."""
    out = ["--out", str(tmp_path / "run")]
    for name, at in (("ckpt-1.data-00000-of-00001", 400_000), ("ckpt-1.index", 68), ("ckpt-1.index", 3268)):
        bad = tmp_path / f"bad-{at}"
        shutil.copytree(FIXTURES / "r18_sk", bad)
        raw = bytearray((bad / name).read_bytes())
        raw[at] ^= 0x04
        (bad / name).write_bytes(bytes(raw))
        assert main(["import-official", str(bad), *out]) == 2, (name, at)
        assert "checksum" in _one_line(capsys), (name, at)
    assert not (tmp_path / "run").exists()


def test_the_output_folder_is_checked_first(tmp_path, capsys, monkeypatch):
    ck = tmp_path / "ck"
    shutil.copytree(FIXTURES / "r18_sk", ck)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "config.yaml").write_text("mine\n")
    assert main(["import-official", str(ck), "--out", "", "--overwrite"]) == 2  # not the working directory
    assert "--out is empty" in _one_line(capsys)
    assert main(["import-official", str(ck), "--out", str(ck)]) == 2
    assert "checkpoint's own folder" in _one_line(capsys)
    assert (tmp_path / "config.yaml").read_text() == "mine\n" and not (ck / "config.yaml").exists()
    (ck / "checkpoint").write_text('model_checkpoint_path: "ckpt-99"\n')
    assert main(["import-official", str(ck), "--out", str(tmp_path / "run")]) == 2
    assert "ckpt-99" in _one_line(capsys)


def test_a_checkpoint_with_variables_the_network_lacks_is_refused(tmp_path, monkeypatch):
    """Every model variable must land somewhere: an extra layer (say, a squeeze-excitation unit this package does
    not build) is an error, not silently dropped."""
    import simclr.official.convert as convert

    real = convert._model_variables

    def with_extra(path):
        v = real(path)
        v["resnet_model/block_groups/0/layers/0/conv_relu_dropblock_layers/9/se_reduce/kernel"] = np.zeros((1, 1, 8, 2), np.float32)
        return v

    monkeypatch.setattr(convert, "_model_variables", with_extra)
    with pytest.raises(TFCheckpointError, match="unexpected layer|fit no part"):
        official_state_dicts(FIXTURES / "r50")
