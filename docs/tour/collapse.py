"""Make a collapsed copy of a run for docs/tour.md: every image gets the same h.

    python docs/tour/collapse.py RUN OUT

The last residual stage's convolutions are zeroed and its BN shifts set to a constant, so the stage outputs one
constant map whatever the image: the state a collapsed SimCLR run ends in (every representation equal).
"""

import sys
from pathlib import Path

import torch

from simclr.checkpoint import load_checkpoint, save_checkpoint

run, out = Path(sys.argv[1]), Path(sys.argv[2])
state = load_checkpoint(run)
for k, v in state["model"].items():
    if k.startswith("encoder.layer4.") and v.is_floating_point():
        if k.endswith("weight") and v.dim() == 4:
            v.zero_()  # the stage's convolutions (main branch and shortcut) ignore their input
        elif k.endswith("bias"):
            v.fill_(0.5)  # ... and their BN shifts give every unit the same positive value
        elif k.endswith("running_mean"):
            v.zero_()
out.mkdir(parents=True, exist_ok=True)
save_checkpoint(state, out / "checkpoint.pt")
print(f"wrote {out / 'checkpoint.pt'}")
