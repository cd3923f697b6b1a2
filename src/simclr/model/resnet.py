"""ResNet encoders f(.) with torchvision-compatible parameter names.

The encoder returns the representation h: the global-average-pooled output of the last stage.
Parameter names and shapes equal torchvision's ``resnetNN`` (without ``fc``) at width 1 with the
standard stem, so weights move between the two with a plain ``load_state_dict``.

Width multipliers scale every convolution (the paper's ResNet-50 (2x), (4x)); fractional widths
such as 0.25 give small models for CPU runs. Images of 32px or less use the CIFAR stem
(3x3 conv, stride 1, no max-pool), as in the paper's appendix B.9.
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


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with an identity (or 1x1 projection) shortcut."""

    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
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
    """1x1 reduce, 3x3 (carrying the stride, as torchvision's v1.5), 1x1 expand by 4."""

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = _conv1x1(cin, planes)
        self.bn1 = nn.BatchNorm2d(planes)
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
    """ResNet trunk returning h of shape (B, num_features) from images (B, 3, H, W).

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
    """

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        layers: tuple[int, int, int, int],
        width: float = 1.0,
        cifar_stem: bool = False,
        zero_init_residual: bool = True,
        stage1_projection: bool = False,
    ):
        super().__init__()
        if width <= 0:
            raise ValueError(f"width must be > 0, got {width}")
        base = max(1, int(round(64 * width)))
        self.width = width
        self.cifar_stem = cifar_stem
        self.stage1_projection = stage1_projection
        self.inplanes = base
        if cifar_stem:
            self.conv1 = nn.Conv2d(3, base, 3, stride=1, padding=1, bias=False)
        else:
            self.conv1 = nn.Conv2d(3, base, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(base)
        self.relu = nn.ReLU(inplace=True)
        # Identity keeps the module tree (and so the state_dict) the same for both stems.
        self.maxpool = nn.Identity() if cifar_stem else nn.MaxPool2d(3, stride=2, padding=1)
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
        if project or stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                _conv1x1(self.inplanes, planes * block.expansion, stride),
                nn.BatchNorm2d(planes * block.expansion),
            )
        mods = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        mods += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*mods)

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
             stage1_projection: bool = False) -> ResNet:
        return ResNet(block, layers, width=width, cifar_stem=cifar_stem, zero_init_residual=zero_init_residual,
                      stage1_projection=stage1_projection)

    make.__name__ = name
    make.__doc__ = f"{name} encoder; returns h of shape (B, num_features)."
    return make


resnet18 = _constructor("resnet18")
resnet34 = _constructor("resnet34")
resnet50 = _constructor("resnet50")
resnet101 = _constructor("resnet101")
resnet152 = _constructor("resnet152")


def build_encoder(arch: str, width: float = 1.0, cifar_stem: bool = False, zero_init_residual: bool = True,
                  stage1_projection: bool = False) -> ResNet:
    """Build an encoder by registry name (one of ``ARCHITECTURES``)."""
    if arch not in _SPECS:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHITECTURES)}")
    return _constructor(arch)(width=width, cifar_stem=cifar_stem, zero_init_residual=zero_init_residual,
                              stage1_projection=stage1_projection)


def resnet_from_state_dict(state_dict: dict[str, torch.Tensor]) -> ResNet:
    """Build the ResNet that a torchvision-named state_dict describes (depth, width, stem) and load it.

    Useful for weights exported with ``simclr export --format torchvision`` or taken from torchvision
    itself (its ``fc`` is ignored).
    """
    sd = {k: v for k, v in state_dict.items() if not k.startswith("fc.")}
    bottleneck = "layer1.0.conv3.weight" in sd
    blocks = tuple(len({k.split(".")[1] for k in sd if k.startswith(f"layer{i}.")}) for i in range(1, 5))
    for name, (block, layers) in _SPECS.items():
        if (block is Bottleneck) == bottleneck and layers == blocks:
            break
    else:
        raise ValueError(f"no ResNet has {blocks} blocks per stage ({'bottleneck' if bottleneck else 'basic'} blocks)")
    conv1 = sd["conv1.weight"]
    width = conv1.shape[0] / 64
    model = build_encoder(name, width=width, cifar_stem=conv1.shape[-1] == 3,
                          stage1_projection=not bottleneck and "layer1.0.downsample.0.weight" in sd)
    model.load_state_dict(sd)
    return model
