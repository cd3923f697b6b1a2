"""The temperature figure of docs/tour.md: how much of NT-Xent's gradient each temperature puts on the hardest
negatives, for the projections of one batch of a trained run.

    python docs/tour/temperature.py RUN OUT.png
"""

import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from simclr import SimCLRAugment, load_run  # noqa: E402
from simclr.config import DataConfig  # noqa: E402
from simclr.data import load_dataset  # noqa: E402
from simclr.evaluate.hardness import negative_gradient_share, share_at  # noqa: E402

run = load_run(sys.argv[1])
data = load_dataset("synthetic", DataConfig(image_size=run.image_size, synthetic_train=256))
aug = SimCLRAugment(run.image_size)
g = torch.Generator().manual_seed(0)
x = data.get(torch.arange(256))
with torch.no_grad():
    z1, z2 = (run.head(run.encoder(aug(x, g))) for _ in range(2))
fig, ax = plt.subplots(figsize=(5.5, 4))
for tau in (0.05, 0.1, 0.5, 1.0):
    curve = negative_gradient_share(z1, z2, tau)  # cumulative share, hardest negatives first
    frac = torch.arange(1, len(curve) + 1) / len(curve)
    ax.plot(frac, curve, label=f"tau {tau}")
    print(f"tau {tau}: the hardest 1% of negatives get {100 * share_at(curve, 0.01):.1f}% of the gradient")
ax.plot(frac, frac, "k:", lw=0.8, label="all negatives alike")
ax.set_xscale("log")
ax.set_xlabel("fraction of negatives, hardest first")
ax.set_ylabel("share of the gradient on negatives")
ax.set_title("NT-Xent is hardness-aware: lower tau, harder focus")
ax.legend()
fig.tight_layout()
fig.savefig(sys.argv[2], dpi=110)
