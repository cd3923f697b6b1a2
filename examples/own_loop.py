"""SimCLR in your own training loop: a plain torch DataLoader over a folder of images and simclr's pieces.

    python examples/own_loop.py PATH/TO/IMAGES [--steps 200] [--image-size 32] [--batch-size 64] [--out encoder.pt]

Any folder works (images anywhere below it; labels are not used). See docs/api.md for every piece.
"""

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from simclr import LARS, ProjectionHead, SimCLRAugment, nt_xent_with_accuracy, param_groups, resnet18, warmup_cosine

EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


class Folder(torch.utils.data.Dataset):
    """Every image below ``root`` as uint8 (3, S, S): resized so the shorter side is S, centre square (the random
    crops are cut later, on the device, by SimCLRAugment)."""

    def __init__(self, root: str, size: int):
        self.files = sorted(p for p in Path(root).rglob("*") if p.suffix.lower() in EXTENSIONS)
        self.size = size
        if not self.files:
            raise SystemExit(f"no images under {root}")

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        img = ImageOps.fit(Image.open(self.files[i]).convert("RGB"), (self.size, self.size), Image.BICUBIC)
        return torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("data")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--width", type=float, default=0.25)
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    torch.manual_seed(0)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    loader = torch.utils.data.DataLoader(Folder(args.data, args.image_size), batch_size=args.batch_size, shuffle=True,
                                         drop_last=True, num_workers=2)
    augment = SimCLRAugment(args.image_size)  # the paper's views; 32 px: colour strength 0.5, no blur
    encoder = resnet18(width=args.width, cifar_stem=args.image_size <= 32).to(device)  # f: images -> h
    head = ProjectionHead(encoder.num_features, num_layers=2, out_dim=128).to(device)  # g: h -> z
    model = torch.nn.ModuleDict({"encoder": encoder, "head": head})
    peak = 1.0 * args.batch_size / 256  # lr 1.0 x B/256 (small images), LARS as the paper
    opt = LARS(param_groups(model, weight_decay=1e-4), lr=peak, momentum=0.9)
    step = 0
    while step < args.steps:
        for x in loader:
            x = x.to(device)
            v1, v2 = augment(x), augment(x)  # two independent draws of the chain
            z = head(encoder(torch.cat((v1, v2))))  # both views in one batch: BN sees 2N images
            loss, acc = nt_xent_with_accuracy(*z.chunk(2), temperature=0.1)
            for g in opt.param_groups:
                g["lr"] = warmup_cosine(step, args.steps, args.steps // 10, peak)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            print(f"step {step + 1}/{args.steps}  loss {loss.item():.4f}  contrastive acc {acc.item():.3f}", flush=True)
            step += 1
            if step == args.steps:
                break
    if args.out:
        torch.save(encoder.state_dict(), args.out)  # torchvision names: resnet18's state_dict without fc
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
