"""Check that exported encoders compute the same h as the PyTorch encoder, on real images.

    python benchmarks/export_check.py --checkpoint RUN --data PATH [--n 512] [--out DIR]

Exports the run's encoder as ONNX (run with onnxruntime) and as a torchvision-format state_dict
(rebuilt with ``simclr.models.resnet_from_state_dict``), feeds the first N images of PATH (centre
views, [0, 1]) through all three and prints the largest absolute differences as JSON.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch

from simclr.data.augment import center_resize
from simclr.data import load_dataset
from simclr.checkpoint import load_run
from simclr.config import DataConfig
from simclr.evaluate.export import export_encoder
from simclr.model.resnet import resnet_from_state_dict


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--n", type=int, default=512)
    ap.add_argument("--out", help="keep the exported files here")
    a = ap.parse_args(argv)
    import onnxruntime as ort

    run = load_run(a.checkpoint)
    encoder, size = run.encoder, run.image_size
    ds = load_dataset(a.data, DataConfig(image_size=size))
    x = center_resize(ds.get(torch.arange(min(a.n, len(ds)))), size)
    with torch.no_grad():
        ref = encoder(x).numpy()
    out = Path(a.out) if a.out else Path(tempfile.mkdtemp())
    onnx_path = export_encoder(encoder, "onnx", out / "encoder.onnx", size)
    tv_path = export_encoder(encoder, "torchvision", out / "encoder_torchvision.pth", size)
    h_onnx = ort.InferenceSession(str(onnx_path)).run(["h"], {"images": x.numpy()})[0]
    rebuilt = resnet_from_state_dict(torch.load(tv_path, weights_only=True)).eval()
    with torch.no_grad():
        h_tv = rebuilt(x).numpy()
    res = {"images": len(x), "dim": ref.shape[1], "max_abs_diff_onnx": float(np.abs(h_onnx - ref).max()),
           "max_abs_diff_torchvision": float(np.abs(h_tv - ref).max()), "max_abs_h": float(np.abs(ref).max())}
    print(json.dumps(res))
    return res


if __name__ == "__main__":
    main()
