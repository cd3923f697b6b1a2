"""ResNet encoders f(.) with torchvision-compatible parameter names.

The encoder returns the representation h: the global-average-pooled output of the last stage.
Parameter names and shapes equal torchvision's ``resnetNN`` (without ``fc``) at width 1 with the
standard stem, so weights move between the two with a plain ``load_state_dict``.

Width multipliers scale every convolution (the paper's ResNet-50 (2x), (4x)); fractional widths
such as 0.25 give small models for CPU runs. Images of 32px or less use the CIFAR stem
(3x3 conv, stride 1, no max-pool), as in the paper's appendix B.9.

SimCLRv2's selective-kernel networks (``sk_ratio > 0``) follow the official tf2/resnet.py: every 3x3
convolution of a bottleneck becomes a selective-kernel convolution, the 7x7 stem becomes three 3x3
convolutions and projection shortcuts average-pool before their 1x1 convolution (ResNet-D). These have no
torchvision counterpart; their extra modules are named as timm names its deep-stem, avg-down ResNets.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "ResNet",
    "BasicBlock",
    "Bottleneck",
    "ARCHITECTURES",
    "build_encoder",
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "SelectiveKernelConv",
    "TFMaxPool2d",
    "TFAvgPool2d",
]


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


class StridedConv1x1(nn.Conv2d):
    """A 1x1 convolution with stride s (a projection shortcut), computed as "subsample, then 1x1 conv"
    where oneDNN's CPU kernel for it is broken.

    oneDNN (v3.x, in PyTorch's CPU builds) overruns a scratch buffer in the weight gradient of a
    strided 1x1 convolution on channels-last input with fewer than 16 input channels: a segfault or
    "double free or corruption" in the first backward (upstream uxlfoundation/oneDNN#6035; reproduced
    by tests/model/test_resnet.py). Taking every s-th pixel first and convolving with stride 1 is the
    same operation (exact, also for the gradients) and avoids that kernel. Parameter names and shapes
    are those of nn.Conv2d.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.in_channels < 16 and x.device.type == "cpu" and self.stride != (1, 1):
            sh, sw = self.stride
            return F.conv2d(x[:, :, ::sh, ::sw], self.weight, self.bias)
        return super().forward(x)


def _conv1x1(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    if stride == 1:
        return nn.Conv2d(cin, cout, 1, bias=False)
    return StridedConv1x1(cin, cout, 1, stride=stride, bias=False)


def _same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow's SAME padding of one dimension: (before, after); the extra pixel goes after."""
    total = max((-(-size // stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class TFMaxPool2d(nn.Module):
    """Max-pool with TensorFlow's SAME padding (windows start at pixel 0 on even sizes), as the official
    networks pool after their stem; torchvision's ``MaxPool2d(3, 2, padding=1)`` starts them at -1.
    (B, C, H, W) -> (B, C, ceil(H / stride), ceil(W / stride))."""

    def __init__(self, kernel_size: int = 3, stride: int = 2):
        super().__init__()
        self.kernel_size, self.stride = kernel_size, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        top, bottom = _same_padding(x.shape[-2], self.kernel_size, self.stride)
        left, right = _same_padding(x.shape[-1], self.kernel_size, self.stride)
        x = F.pad(x, (left, right, top, bottom), value=float("-inf"))
        return F.max_pool2d(x, self.kernel_size, self.stride)


class TFAvgPool2d(nn.Module):
    """The 2x2 average pool of the official ResNet-D shortcut (tf2/resnet.py).

    Stride 2: one zero row and column padded at the end, then every window divided by 4 (TF's
    ``FixedPadding(2)`` + VALID pooling). Stride 1 (stage 1): SAME padding, where TensorFlow averages only
    the pixels inside the image, so the last row and column are divided by 2 (the corner by 1).
    (B, C, H, W) -> (B, C, ceil(H / stride), ceil(W / stride)).
    """

    def __init__(self, stride: int):
        super().__init__()
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            return F.avg_pool2d(F.pad(x, (0, 1, 0, 1)), 2, self.stride)
        total = F.avg_pool2d(F.pad(x, (0, 1, 0, 1)), 2, 1)
        ones = torch.ones_like(x[:1, :1])
        return total / F.avg_pool2d(F.pad(ones, (0, 1, 0, 1)), 2, 1)


class SelectiveKernelConv(nn.Module):
    """A selective-kernel 3x3 convolution (Li et al. 2019, arXiv 1903.06586) as SK_Conv2D of the official
    tf2/resnet.py: (B, cin, H, W) -> (B, planes, H/stride, W/stride), followed by nothing (its BN is inside).

    One 3x3 convolution gives two streams of ``planes`` channels (BN, ReLU); their sum, pooled over space,
    goes through a 1x1 bottleneck of max(int(planes * sk_ratio), 32) channels (BN, ReLU) and a 1x1 expansion
    to two logits per channel; a softmax over the two streams weights each channel's mix.
    """

    def __init__(self, cin: int, planes: int, stride: int, sk_ratio: float, min_dim: int = 32):
        super().__init__()
        mid = max(int(planes * sk_ratio), min_dim)
        self.conv = _conv3x3(cin, 2 * planes, stride)
        self.bn = nn.BatchNorm2d(2 * planes)
        self.fc1 = nn.Conv2d(planes, mid, 1, bias=False)
        self.fc_bn = nn.BatchNorm2d(mid)
        self.fc2 = nn.Conv2d(mid, 2 * planes, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = F.relu(self.bn(self.conv(x))).chunk(2, dim=1)  # the two streams, (B, planes, H', W') each
        mix = F.relu(self.fc_bn(self.fc1((a + b).mean((2, 3), keepdim=True))))
        wa, wb = torch.softmax(torch.stack(self.fc2(mix).chunk(2, dim=1)), dim=0)  # (B, planes, 1, 1) each
        return a * wa + b * wb


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with an identity (or 1x1 projection) shortcut."""

    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
                 sk_ratio: float = 0.0):
        super().__init__()  # sk_ratio: the official ResidualBlock keeps plain 3x3s (only its shortcut changes)
        self.conv1 = _conv3x3(cin, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (carrying the stride, as torchvision's v1.5), 1x1 expand by 4.

    With ``sk_ratio > 0`` the 3x3 is a ``SelectiveKernelConv``, which ends in its own BN and ReLU, so
    ``bn2`` is the identity (the ReLU after it then changes nothing: its input is a mix of ReLU outputs).
    """

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
                 sk_ratio: float = 0.0):
        super().__init__()
        self.conv1 = _conv1x1(cin, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        if sk_ratio > 0:
            self.conv2 = SelectiveKernelConv(planes, planes, stride, sk_ratio)
            self.bn2 = nn.Identity()
        else:
            self.conv2 = _conv3x3(planes, planes, stride)
            self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = _conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """ResNet trunk (``arch`` names it when built through the registry) returning h of shape (B, num_features) from images (B, 3, H, W).

    Args:
        block: BasicBlock or Bottleneck.
        layers: blocks per stage, e.g. (2, 2, 2, 2) for ResNet-18.
        width: channel multiplier (1, 2, 4 as in the paper; fractions for small runs).
        cifar_stem: 3x3 stride-1 first convolution and no max-pool (for images of 32px or less).
        zero_init_residual: start each block's last BN gamma at 0, so every block begins as the
            identity; this stabilises large-batch training (Goyal et al., 2017; the paper's code).
        stage1_projection: give the first block of stage 1 a projection shortcut (1x1 conv + BN) even
            where identity fits, as the official tf2/resnet.py does for every stage. Only changes
            ResNet-18/34 (bottleneck stage 1 widens, so it has one anyway); torchvision's layout is without.
        sk_ratio: > 0 gives SimCLRv2's selective-kernel network (0.0625 in the official models): SK 3x3
            convolutions in bottlenecks, the three-conv stem (unless ``cifar_stem``) and average-pool
            (ResNet-D) projection shortcuts, as the official tf2/resnet.py (whose ResNet-18/34 also have the
            stage-1 projection: ``stage1_projection``).
        tf_padding: the stem's max-pool windows placed as TensorFlow's SAME padding places them (needed to
            reproduce the official checkpoints' outputs); torchvision's symmetric padding otherwise.
    """

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        layers: tuple[int, int, int, int],
        width: float = 1.0,
        cifar_stem: bool = False,
        zero_init_residual: bool = True,
        stage1_projection: bool = False,
        sk_ratio: float = 0.0,
        tf_padding: bool = False,
    ):
        super().__init__()
        if width <= 0:
            raise ValueError(f"width must be > 0, got {width}")
        if not 0 <= sk_ratio <= 1:
            raise ValueError(f"sk_ratio must be in [0, 1], got {sk_ratio}")
        base = max(1, int(round(64 * width)))
        self.width = width
        self.cifar_stem = cifar_stem
        self.stage1_projection = stage1_projection
        self.sk_ratio = sk_ratio
        self.tf_padding = tf_padding
        self.inplanes = base
        if cifar_stem:
            self.conv1 = nn.Conv2d(3, base, 3, stride=1, padding=1, bias=False)
        elif sk_ratio > 0:  # the official SK networks' stem (ResNet-C): three 3x3 convolutions
            half = max(1, base // 2)
            self.conv1 = nn.Sequential(_conv3x3(3, half, 2), nn.BatchNorm2d(half), nn.ReLU(inplace=True),
                                       _conv3x3(half, half), nn.BatchNorm2d(half), nn.ReLU(inplace=True),
                                       _conv3x3(half, base))
        else:
            self.conv1 = nn.Conv2d(3, base, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(base)
        self.relu = nn.ReLU(inplace=True)
        # Identity keeps the module tree (and so the state_dict) the same for both stems.
        if cifar_stem:
            self.maxpool = nn.Identity()
        else:
            self.maxpool = TFMaxPool2d(3, 2) if tf_padding else nn.MaxPool2d(3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, base, layers[0], 1, project=stage1_projection)
        self.layer2 = self._make_layer(block, base * 2, layers[1], 2)
        self.layer3 = self._make_layer(block, base * 4, layers[2], 2)
        self.layer4 = self._make_layer(block, base * 8, layers[3], 2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.num_features = base * 8 * block.expansion

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, (BasicBlock, Bottleneck)):
                    nn.init.zeros_(m.last_bn().weight)

    def _make_layer(self, block, planes: int, blocks: int, stride: int, project: bool = False) -> nn.Sequential:
        downsample = None
        cout = planes * block.expansion
        if self.sk_ratio > 0 and (project or stride != 1 or self.inplanes != cout):
            # ResNet-D: average-pool, then a stride-1 1x1 convolution (every projection, stage 1's too)
            downsample = nn.Sequential(TFAvgPool2d(stride), _conv1x1(self.inplanes, cout), nn.BatchNorm2d(cout))
        elif project or stride != 1 or self.inplanes != cout:
            downsample = nn.Sequential(_conv1x1(self.inplanes, cout, stride), nn.BatchNorm2d(cout))
        mods = [block(self.inplanes, planes, stride, downsample, sk_ratio=self.sk_ratio)]
        self.inplanes = cout
        mods += [block(self.inplanes, planes, sk_ratio=self.sk_ratio) for _ in range(1, blocks)]
        return nn.Sequential(*mods)

    def arch_config(self) -> dict:
        """The keywords that rebuild this network with ``build_encoder`` (the ``model.*`` keys)."""
        return {"arch": getattr(self, "arch", None), "width": self.width, "cifar_stem": self.cifar_stem,
                "stage1_projection": self.stage1_projection, "sk_ratio": self.sk_ratio, "tf_padding": self.tf_padding}

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> last feature map (B, num_features, H', W')."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> h (B, num_features)."""
        return torch.flatten(self.avgpool(self.forward_features(x)), 1)


_SPECS: dict[str, tuple[type, tuple[int, int, int, int]]] = {
    "resnet18": (BasicBlock, (2, 2, 2, 2)),
    "resnet34": (BasicBlock, (3, 4, 6, 3)),
    "resnet50": (Bottleneck, (3, 4, 6, 3)),
    "resnet101": (Bottleneck, (3, 4, 23, 3)),
    "resnet152": (Bottleneck, (3, 8, 36, 3)),
}

ARCHITECTURES: tuple[str, ...] = tuple(_SPECS)


def _constructor(name: str) -> Callable[..., ResNet]:
    block, layers = _SPECS[name]

    def make(width: float = 1.0, cifar_stem: bool = False, zero_init_residual: bool = True,
             stage1_projection: bool = False, sk_ratio: float = 0.0, tf_padding: bool = False) -> ResNet:
        net = ResNet(block, layers, width=width, cifar_stem=cifar_stem, zero_init_residual=zero_init_residual,
                     stage1_projection=stage1_projection, sk_ratio=sk_ratio, tf_padding=tf_padding)
        net.arch = name
        return net

    make.__name__ = name
    make.__doc__ = f"{name} encoder (see ``ResNet`` for the arguments); returns h of shape (B, num_features)."
    return make


resnet18 = _constructor("resnet18")
resnet34 = _constructor("resnet34")
resnet50 = _constructor("resnet50")
resnet101 = _constructor("resnet101")
resnet152 = _constructor("resnet152")


def build_encoder(arch: str, **kwargs) -> ResNet:
    """Build an encoder by registry name (one of ``ARCHITECTURES``); keywords as ``ResNet``'s (the keys of
    ``model.*`` in the config)."""
    if arch not in _SPECS:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHITECTURES)}")
    return _constructor(arch)(**kwargs)


def resnet_from_state_dict(state_dict: dict[str, torch.Tensor], tf_padding: bool = False) -> ResNet:
    """Build the ResNet that a state_dict describes (depth, width, stem, selective kernels) and load it.

    Useful for weights exported with ``simclr export --format torchvision`` or taken from torchvision
    itself (its ``fc`` is ignored), and for this package's SK networks. ``tf_padding`` has no weights, so
    it is the caller's to say.
    """
    sd = {k: v for k, v in state_dict.items() if not k.startswith("fc.")}
    bottleneck = "layer1.0.conv3.weight" in sd
    blocks = tuple(len({k.split(".")[1] for k in sd if k.startswith(f"layer{i}.")}) for i in range(1, 5))
    for name, (block, layers) in _SPECS.items():
        if (block is Bottleneck) == bottleneck and layers == blocks:
            break
    else:
        raise ValueError(f"no ResNet has {blocks} blocks per stage ({'bottleneck' if bottleneck else 'basic'} blocks)")
    width = sd["layer1.0.conv1.weight"].shape[1] / 64
    sk_ratio = 0.0
    if "layer4.0.conv2.fc1.weight" in sd:
        # mid = max(int(planes * ratio), 32) per stage, widest at stage 4: above 32 it gives the ratio; at 32 any
        # ratio with int(planes * ratio) <= 32 builds the same network (the official 0.0625 where it fits)
        mid, planes = sd["layer4.0.conv2.fc1.weight"].shape[0], sd["layer4.0.conv1.weight"].shape[0]
        sk_ratio = mid / planes if mid > 32 else min(0.0625, 32 / planes)
    resnet_d = any(k.startswith("layer2.0.downsample.2.") for k in sd)
    stem = sd["conv1.weight"] if "conv1.weight" in sd else None
    model = build_encoder(name, width=width, cifar_stem=stem is not None and stem.shape[-1] == 3,
                          stage1_projection=not bottleneck and any(k.startswith("layer1.0.downsample.") for k in sd),
                          sk_ratio=sk_ratio if (sk_ratio or not resnet_d) else 0.0625, tf_padding=tf_padding)
    model.load_state_dict(sd)
    return model
