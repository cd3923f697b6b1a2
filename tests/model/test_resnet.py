"""Encoders: torchvision-compatible names and shapes, widths, stems, initialisation."""

import pytest
import torch

from simclr.model.resnet import ARCHITECTURES, build_encoder, resnet18, resnet50


def torchvision_resnet_spec(blocks, bottleneck):
    """Names and shapes of torchvision's ResNet state_dict (without fc), transcribed from its layout:
    conv1 7x7/2 -> bn1 -> layer1..4 (first block of layers 2-4 downsamples; bottlenecks expand by 4)."""
    spec = {"conv1.weight": (64, 3, 7, 7)}

    def bn(prefix, c):
        spec.update({f"{prefix}.weight": (c,), f"{prefix}.bias": (c,), f"{prefix}.running_mean": (c,),
                     f"{prefix}.running_var": (c,), f"{prefix}.num_batches_tracked": ()})

    bn("bn1", 64)
    inplanes = 64
    exp = 4 if bottleneck else 1
    for li, (n, planes) in enumerate(zip(blocks, (64, 128, 256, 512)), start=1):
        for bi in range(n):
            p = f"layer{li}.{bi}"
            if bottleneck:
                spec[f"{p}.conv1.weight"] = (planes, inplanes, 1, 1)
                bn(f"{p}.bn1", planes)
                spec[f"{p}.conv2.weight"] = (planes, planes, 3, 3)
                bn(f"{p}.bn2", planes)
                spec[f"{p}.conv3.weight"] = (planes * 4, planes, 1, 1)
                bn(f"{p}.bn3", planes * 4)
            else:
                spec[f"{p}.conv1.weight"] = (planes, inplanes, 3, 3)
                bn(f"{p}.bn1", planes)
                spec[f"{p}.conv2.weight"] = (planes, planes, 3, 3)
                bn(f"{p}.bn2", planes)
            if bi == 0 and (li > 1 or inplanes != planes * exp):
                spec[f"{p}.downsample.0.weight"] = (planes * exp, inplanes, 1, 1)
                bn(f"{p}.downsample.1", planes * exp)
            inplanes = planes * exp
    return spec


@pytest.mark.parametrize("ctor,blocks,bottleneck,n_keys,n_params", [
    (resnet18, (2, 2, 2, 2), False, 120, 11_176_512),  # torchvision: 122 keys, 11,689,512 params with fc
    (resnet50, (3, 4, 6, 3), True, 318, 23_508_032),  # torchvision: 320 keys, 25,557,032 params with fc
])
def test_state_dict_matches_torchvision(ctor, blocks, bottleneck, n_keys, n_params):
    """Acceptance check 5."""
    sd = ctor(width=1.0, cifar_stem=False).state_dict()
    ref = torchvision_resnet_spec(blocks, bottleneck)
    assert list(sd) == list(ref)  # same names in the same order
    assert {k: tuple(v.shape) for k, v in sd.items()} == ref
    assert len(sd) == n_keys
    assert sum(v.numel() for k, v in sd.items() if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))) == n_params


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_all_architectures_forward(arch):
    enc = build_encoder(arch, width=0.125, cifar_stem=True)
    h = enc(torch.rand(2, 3, 32, 32))
    assert h.shape == (2, enc.num_features)
    expected = 8 * 8 * (4 if arch in ("resnet50", "resnet101", "resnet152") else 1)
    assert enc.num_features == expected


def test_width_multiplier_scales_channels():
    assert resnet50(width=2).num_features == 4096
    assert resnet18(width=4).layer1[0].conv1.weight.shape[0] == 256
    assert resnet18(width=0.25).num_features == 128


def test_cifar_stem():
    enc = resnet18(width=0.25, cifar_stem=True)
    assert enc.conv1.weight.shape[-2:] == (3, 3) and enc.conv1.stride == (1, 1)
    assert isinstance(enc.maxpool, torch.nn.Identity)
    assert enc.forward_features(torch.rand(1, 3, 32, 32)).shape[-1] == 4  # 32 -> 4 with three stride-2 stages
    std = resnet18(width=0.25)
    assert std.forward_features(torch.rand(1, 3, 224, 224)).shape[-1] == 7


def test_zero_init_residual():
    enc = resnet50(width=0.25)
    for block in [b for layer in (enc.layer1, enc.layer2, enc.layer3, enc.layer4) for b in layer]:
        assert torch.all(block.bn3.weight == 0)
    enc = resnet18(width=0.25, zero_init_residual=False)
    assert torch.all(enc.layer1[0].bn2.weight == 1)


def test_weights_round_trip_between_instances():
    a, b = resnet18(width=0.5), resnet18(width=0.5)
    b.load_state_dict(a.state_dict())
    x = torch.rand(2, 3, 64, 64)
    a.eval(), b.eval()
    torch.testing.assert_close(a(x), b(x))


def test_bad_arch_and_width():
    with pytest.raises(ValueError, match="unknown architecture"):
        build_encoder("resnet19")
    with pytest.raises(ValueError, match="width"):
        build_encoder("resnet18", width=0)


# oneDNN's CPU weight gradient of a strided 1x1 convolution on channels-last input with fewer than 16
# input channels writes past a scratch buffer (uxlfoundation/oneDNN#6035): a ResNet-18 of width 0.125
# at 224 px died in its first backward. The minimal reproduction of the upstream kernel is
#     conv = nn.Conv2d(8, 16, 1, stride=2, bias=False).to(memory_format=torch.channels_last)
#     x = torch.randn(1, 8, 56, 56).contiguous(memory_format=torch.channels_last).requires_grad_()
#     conv(x).sum().backward()    # SIGSEGV / "double free or corruption" on AVX-512 machines
# These tests run it through the project's layers, in a child process so that a crash fails the test
# instead of killing the suite.
_CRASH_CHILD = r"""
import sys, torch
from simclr.model.resnet import StridedConv1x1, build_encoder
conv = StridedConv1x1(8, 16, 1, stride=2, bias=False).to(memory_format=torch.channels_last)
x = torch.randn(1, 8, 56, 56).contiguous(memory_format=torch.channels_last).requires_grad_()
for _ in range(3):
    conv(x).sum().backward()
for width, size in ((0.125, 224), (0.0625, 224), (0.125, 192)):
    net = build_encoder("resnet18", width=width).to(memory_format=torch.channels_last)
    x = torch.rand(4, 3, size, size).contiguous(memory_format=torch.channels_last)
    net(x).sum().backward()
print("ok")
"""


def test_narrow_resnet_at_224_channels_last_does_not_crash():
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-c", _CRASH_CHILD], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "ok", (r.returncode, r.stderr[-2000:])


def test_strided_conv1x1_equals_a_strided_conv():
    from simclr.model.resnet import StridedConv1x1

    torch.manual_seed(0)
    ours = StridedConv1x1(6, 10, 1, stride=2, bias=False).double()
    ref = torch.nn.Conv2d(6, 10, 1, stride=2, bias=False).double()
    ref.load_state_dict(ours.state_dict())
    for side in (7, 8):  # odd sizes: the output keeps ceil(side / 2) rows
        x = torch.randn(3, 6, side, side, dtype=torch.float64, requires_grad=True)
        x2 = x.detach().clone().requires_grad_()
        a, b = ours(x), ref(x2)
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
        g = torch.randn_like(a)
        a.backward(g)
        b.backward(g)
        torch.testing.assert_close(x.grad, x2.grad, rtol=0, atol=1e-12)
        torch.testing.assert_close(ours.weight.grad, ref.weight.grad, rtol=0, atol=1e-12)
        ours.zero_grad(), ref.zero_grad()


def test_stage1_projection_is_the_official_basic_block_layout():
    """tf2/resnet.py gives the first block of every stage a projection shortcut; torchvision's ResNet-18/34 do
    not in stage 1. The flag adds exactly one 1x1 conv + BN there and changes nothing for bottlenecks."""
    from simclr.model.resnet import resnet_from_state_dict

    plain, official = build_encoder("resnet18"), build_encoder("resnet18", stage1_projection=True)
    extra = set(official.state_dict()) - set(plain.state_dict())
    assert extra == {f"layer1.0.downsample.{k}" for k in ("0.weight", "1.weight", "1.bias", "1.running_mean",
                                                          "1.running_var", "1.num_batches_tracked")}
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert n(official) - n(plain) == 64 * 64 + 2 * 64
    assert set(build_encoder("resnet50", stage1_projection=True).state_dict()) == set(build_encoder("resnet50").state_dict())
    # the shortcut is used: zeroing its conv changes the output
    x = torch.rand(2, 3, 32, 32)
    official.eval()
    before = official(x)
    with torch.no_grad():
        official.layer1[0].downsample[0].weight.zero_()
    assert not torch.allclose(before, official(x))
    # a state_dict with the shortcut rebuilds the official layout
    rebuilt = resnet_from_state_dict(official.state_dict())
    assert rebuilt.stage1_projection and not resnet_from_state_dict(plain.state_dict()).stage1_projection
