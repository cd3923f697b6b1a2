"""Embeddings and exports: row order, formats, and the same h everywhere."""

import csv

import numpy as np
import pytest
import torch

from conftest import write_folder
from simclr.checkpoint import load_run
from simclr.cli import main
from simclr.config import DataConfig
from simclr.data import load_folder
from simclr.model.resnet import resnet18, resnet50, resnet_from_state_dict


def test_embed_rows_match_index(tiny_run, tmp_path):
    write_folder(tmp_path / "imgs", per_class=7, classes=("x", "y", "z"), size=(16, 16))
    out = tmp_path / "emb"
    assert main(["embed", "--checkpoint", str(tiny_run), "--data", str(tmp_path / "imgs"), "--out", str(out)]) == 0
    emb = np.load(out / "embeddings.npy")
    rows = list(csv.DictReader(open(out / "index.csv")))
    assert emb.dtype == np.float32 and emb.shape == (21, 128 // 2)
    assert [int(r["row"]) for r in rows] == list(range(21))
    # row i is image i: recompute one directly
    enc = load_run(tiny_run).encoder
    ds = load_folder(tmp_path / "imgs", DataConfig(image_size=16))
    assert rows[9]["path"] == ds.paths[9] and rows[9]["class"] == "y"
    from simclr.data.augment import center_resize

    with torch.no_grad():
        h = enc(center_resize(ds.get(torch.tensor([9])), 16))
    np.testing.assert_allclose(emb[9], h[0].numpy(), atol=1e-5)
    assert main(["embed", "--checkpoint", str(tiny_run), "--data", str(tmp_path / "imgs"), "--out", str(tmp_path / "z"),
                 "--projection"]) == 0
    assert np.load(tmp_path / "z" / "embeddings.npy").shape == (21, 128)


@pytest.mark.filterwarnings("ignore")
def test_exports_give_the_same_h(tiny_run, tmp_path):
    enc = load_run(tiny_run).encoder
    x = torch.rand(5, 3, 16, 16)
    with torch.no_grad():
        ref = enc(x).numpy()
    assert main(["export", "--checkpoint", str(tiny_run), "--format", "torchvision", "--out", str(tmp_path / "e.pth")]) == 0
    sd = torch.load(tmp_path / "e.pth", weights_only=True)
    rebuilt = resnet_from_state_dict(sd).eval()
    assert rebuilt.cifar_stem and rebuilt.width == 0.125
    with torch.no_grad():
        np.testing.assert_allclose(rebuilt(x).numpy(), ref, atol=1e-5)
    assert main(["export", "--checkpoint", str(tiny_run), "--format", "safetensors", "--out", str(tmp_path / "e.safetensors")]) == 0
    assert main(["export", "--checkpoint", str(tiny_run), "--format", "onnx", "--out", str(tmp_path / "e.onnx")]) == 0
    ort = pytest.importorskip("onnxruntime")
    sess = ort.InferenceSession(str(tmp_path / "e.onnx"))
    for n in (1, 5):  # the batch axis is dynamic
        got = sess.run(["h"], {"images": x[:n].numpy()})[0]
        np.testing.assert_allclose(got, ref[:n], atol=1e-4)


def test_resnet_from_state_dict_identifies_architectures():
    for make, arch_blocks in ((lambda: resnet18(width=0.5), 8), (lambda: resnet50(width=0.25, cifar_stem=True), 16)):
        m = make()
        r = resnet_from_state_dict(m.state_dict())
        assert type(r.layer1[0]) is type(m.layer1[0]) and r.width == m.width and r.cifar_stem == m.cifar_stem
    with pytest.raises(ValueError, match="no ResNet"):
        sd = resnet18().state_dict()
        resnet_from_state_dict({k: v for k, v in sd.items() if not k.startswith("layer4.1")})


def test_torchvision_export_refuses_the_official_stage1_layout(tmp_path):
    """torchvision's resnet18 has no layer1.0.downsample: such a file would not load there, so none is written."""
    from simclr.config import ConfigError
    from simclr.evaluate.export import export_encoder
    from simclr.model.resnet import build_encoder

    with pytest.raises(ConfigError, match="stage-1 projection"):
        export_encoder(build_encoder("resnet18", width=0.125, stage1_projection=True), "torchvision", tmp_path / "e.pth", 32)
    assert not (tmp_path / "e.pth").exists()
    export_encoder(build_encoder("resnet18", width=0.125, stage1_projection=True), "safetensors", tmp_path / "e.safetensors", 32)
    assert (tmp_path / "e.safetensors").is_file()
