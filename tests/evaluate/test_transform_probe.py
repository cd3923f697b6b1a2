"""Table 3's probe: views carry the transformation their label names, and the probe reads it where it is."""

import pytest
import torch
from torch import nn

from simclr.config import AugmentConfig
from simclr.data.augment import rgb_to_grayscale, sobel
from simclr.evaluate.transform_probe import TASKS, _TaskViews, predict_transformations


def _images(n=8, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 3, size, size, generator=g) * 255).to(torch.uint8)


def _views(task, labels, x, seed=3, **keys):
    v = _TaskViews(16, AugmentConfig(**keys), task, labels)
    return v(x, torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("task", list(TASKS))
def test_label_zero_is_the_plain_view_and_each_label_its_transformation(task):
    x = _images()
    k = TASKS[task][0]
    base = _views(task, torch.zeros(8, dtype=torch.long), x)
    for label in range(1, k):
        got = _views(task, torch.full((8,), label), x)
        if task == "color":
            want = rgb_to_grayscale(base).expand_as(base)
        elif task == "rotation":
            want = torch.rot90(base, label, (2, 3))
        elif task == "sobel":
            want = sobel(base)
        else:  # noise: a non-zero, bounded change of every image
            d = (got - base).abs()
            assert (d.flatten(1).mean(1) > 0.02).all() and got.min() >= 0 and got.max() <= 1
            continue
        torch.testing.assert_close(got, want.clamp(0, 1), atol=1e-5, rtol=0)
    assert not torch.equal(base, _views(task, torch.zeros(8, dtype=torch.long), x, seed=4))  # random crops and jitter


def test_labels_follow_the_batches_in_order():
    x = _images(6)
    labels = torch.tensor([0, 1, 2, 3, 1, 0])
    v = _TaskViews(16, AugmentConfig(), "rotation", labels)
    g = torch.Generator().manual_seed(0)
    a, b = v(x[:4], g), v(x[4:], g)
    assert v.pos == 6
    ref = _TaskViews(16, AugmentConfig(), "rotation", torch.zeros(6, dtype=torch.long))
    g = torch.Generator().manual_seed(0)
    base = torch.cat((ref(x[:4], g), ref(x[4:], g)))
    for i, k in enumerate(labels.tolist()):
        torch.testing.assert_close(torch.cat((a, b))[i], torch.rot90(base[i], k, (1, 2)))


class _ColourStats(nn.Module):
    """h: per-channel means and the channels' spread (grayscale has none); knows nothing of the task."""

    num_features = 6

    def forward(self, x):
        m = x.mean((2, 3))
        return torch.cat((m, (m - m.mean(1, keepdim=True)).abs()), 1)


class _Noise(nn.Module):
    """z: random numbers, independent of h."""

    def forward(self, h):
        return torch.randn(h.shape[0], 4, generator=self.g)

    def __init__(self):
        super().__init__()
        self.g = torch.Generator().manual_seed(0)


def test_the_probe_reads_what_h_keeps_and_z_lost():
    from simclr.data.imageset import ImageSet

    def imageset(n, seed):
        return ImageSet(labels=torch.zeros(n, dtype=torch.long), classes=["x"], images=_images(n, 24, seed))

    res = predict_transformations(_ColourStats(), _Noise(), imageset(300, 1), imageset(200, 2), 16, torch.device("cpu"),
                                  tasks=("color",), grid=4)
    assert res["color"]["chance"] == 0.5
    assert res["color"]["h"] > 0.95  # grayscale views have equal channels: linearly separable
    assert abs(res["color"]["z"] - 0.5) < 0.12  # noise carries nothing


def test_unknown_task_is_refused():
    with pytest.raises(ValueError, match="unknown task 'hue'"):
        predict_transformations(_ColourStats(), _Noise(), None, None, 16, torch.device("cpu"), tasks=("hue",))
