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


# -- SimCLRv2's selective-kernel networks ---------------------------------------------------------------

# The official README's table (google-research/simclr, "Pre-trained models for SimCLRv2"): parameters in
# millions, rounded there to whole millions, of the encoder (depth, width, SK).
OFFICIAL_PARAMS_M = {
    (50, 1, False): 24, (50, 1, True): 35, (50, 2, False): 94, (50, 2, True): 140,
    (101, 1, False): 43, (101, 1, True): 65, (101, 2, False): 170, (101, 2, True): 257,
    (152, 1, False): 58, (152, 1, True): 89, (152, 2, False): 233, (152, 2, True): 354, (152, 3, True): 795,
}


@pytest.mark.parametrize("depth,width,sk", sorted(OFFICIAL_PARAMS_M))
def test_parameter_counts_equal_the_official_table(depth, width, sk):
    with torch.device("meta"):  # the 795M model would take 3 GB
        enc = build_encoder(f"resnet{depth}", width=width, sk_ratio=0.0625 if sk else 0.0)
    n = sum(p.numel() for p in enc.parameters()) / 1e6
    # The table's ResNet-152 2x figures are 0.75M and 0.60M above the network (232.25M, 353.40M) while the 1x and
    # 3x ones of the same depth round exactly (58.14, 88.94, 794.70): a width-dependent difference would grow at
    # 3x, so those two are the table's rounding, not the architecture.
    if (depth, width) == (152, 2):
        assert 0 < OFFICIAL_PARAMS_M[depth, width, sk] - n < 1
    else:
        assert round(n) == OFFICIAL_PARAMS_M[depth, width, sk]


def test_sk_layout_names_and_shapes():
    """The SK bottleneck's 3x3 makes 2 x planes channels, its mixing bottleneck max(planes/16, 32); the stem is
    three 3x3 convs (base/2, base/2, base); projection shortcuts are avg-pool + stride-1 1x1 conv + BN."""
    from simclr.model.resnet import SelectiveKernelConv, TFAvgPool2d

    enc = build_encoder("resnet50", width=2, sk_ratio=0.0625)
    sd = enc.state_dict()
    assert [tuple(sd[f"conv1.{i}.weight"].shape) for i in (0, 3, 6)] == [(64, 3, 3, 3), (64, 64, 3, 3), (128, 64, 3, 3)]
    b = enc.layer4[0]
    assert isinstance(b.conv2, SelectiveKernelConv) and isinstance(b.bn2, torch.nn.Identity)
    assert b.conv2.conv.weight.shape == (2048, 1024, 3, 3) and b.conv2.conv.stride == (2, 2)
    assert b.conv2.fc1.weight.shape == (64, 1024, 1, 1) and b.conv2.fc2.weight.shape == (2048, 64, 1, 1)
    assert enc.layer1[0].conv2.fc1.weight.shape == (32, 128, 1, 1)  # 128 / 16 = 8 < 32
    for layer, stride in ((enc.layer1, 1), (enc.layer2, 2), (enc.layer4, 2)):
        ds = layer[0].downsample
        assert isinstance(ds[0], TFAvgPool2d) and ds[0].stride == stride and ds[1].stride == (1, 1)
    assert all(blk.downsample is None for layer in (enc.layer1, enc.layer4) for blk in layer[1:])
    # a CIFAR stem stays one 3x3 conv; basic blocks keep plain 3x3s and get the ResNet-D shortcut only
    small = build_encoder("resnet18", width=0.25, cifar_stem=True, sk_ratio=0.0625, stage1_projection=True)
    assert small.conv1.weight.shape == (16, 3, 3, 3) and isinstance(small.layer2[0].conv2, torch.nn.Conv2d)
    assert isinstance(small.layer1[0].downsample[0], TFAvgPool2d)
    with pytest.raises(ValueError, match="sk_ratio"):
        build_encoder("resnet50", sk_ratio=1.5)


def _sk_reference(x, conv_w, bn, fc1_w, fc_bn, fc2_w, stride):
    """SK_Conv2D of tf2/resnet.py transcribed in float64 with eval-mode BN given as (scale, shift): conv to 2C,
    BN-ReLU, split into two streams stacked on a new axis 0, global = mean over space of their sum, 1x1, BN-ReLU,
    1x1 to 2C, split and stacked the same way, softmax over axis 0, weighted sum over axis 0."""
    y = torch.nn.functional.conv2d(x, conv_w, stride=stride, padding=1)
    y = torch.relu(y * bn[0][None, :, None, None] + bn[1][None, :, None, None])
    c = y.shape[1] // 2
    streams = torch.stack([y[:, :c], y[:, c:]])
    g = streams.sum(0).mean((2, 3))
    g = torch.relu((g @ fc1_w[:, :, 0, 0].T) * fc_bn[0] + fc_bn[1])
    m = g @ fc2_w[:, :, 0, 0].T
    mixing = torch.softmax(torch.stack([m[:, :c], m[:, c:]]), dim=0)[..., None, None]
    return (streams * mixing).sum(0)


@pytest.mark.parametrize("stride,side", [(1, 6), (2, 7)])
def test_selective_kernel_conv_equals_a_float64_transcription(stride, side):
    from simclr.model.resnet import SelectiveKernelConv

    torch.manual_seed(0)
    sk = SelectiveKernelConv(5, 8, stride, sk_ratio=0.0625, min_dim=4).double().eval()
    bns = []
    for bn in (sk.bn, sk.fc_bn):  # non-trivial eval-mode statistics
        with torch.no_grad():
            bn.running_mean.uniform_(-0.5, 0.5), bn.running_var.uniform_(0.5, 2), bn.weight.uniform_(0.5, 2)
            bn.bias.uniform_(-0.5, 0.5)
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        bns.append((scale.detach(), (bn.bias - bn.running_mean * scale).detach()))
    x = torch.randn(3, 5, side, side, dtype=torch.float64)
    ref = _sk_reference(x, sk.conv.weight.detach(), bns[0], sk.fc1.weight.detach(), bns[1], sk.fc2.weight.detach(), stride)
    out = sk(x)
    assert out.shape == (3, 8, -(-side // stride), -(-side // stride))
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)


def _tf_same_pool_reference(x, k, s, op):
    """TF's SAME pooling by brute force: out = ceil(n / s); the window of output i starts at i*s - pad_before,
    pad_before = floor(total / 2), total = max((out - 1) * s + k - n, 0); only pixels inside the image count."""
    n = x.shape[-1]
    out = -(-n // s)
    before = max((out - 1) * s + k - n, 0) // 2
    res = torch.empty(*x.shape[:2], out, out, dtype=x.dtype)
    for i in range(out):
        for j in range(out):
            r0, c0 = i * s - before, j * s - before
            win = x[..., max(r0, 0):min(r0 + k, n), max(c0, 0):min(c0 + k, n)]
            res[..., i, j] = op(win.flatten(2))
    return res


@pytest.mark.parametrize("side", [6, 7, 8, 112])
def test_tf_max_pool_places_windows_as_tensorflow_same(side):
    from simclr.model.resnet import TFMaxPool2d

    x = torch.randn(2, 3, side, side, dtype=torch.float64)
    ref = _tf_same_pool_reference(x, 3, 2, lambda w: w.max(-1).values)
    torch.testing.assert_close(TFMaxPool2d(3, 2)(x), ref, rtol=0, atol=0)
    if side % 2 == 0:  # torchvision's symmetric padding starts the windows one pixel earlier: different
        assert not torch.equal(torch.nn.MaxPool2d(3, 2, padding=1)(x), ref)


@pytest.mark.parametrize("side", [6, 7])
def test_tf_avg_pools_of_the_resnet_d_shortcut(side):
    from simclr.model.resnet import TFAvgPool2d

    x = torch.randn(2, 3, side, side, dtype=torch.float64)
    # stride 1: SAME, the mean of the pixels inside the image
    torch.testing.assert_close(TFAvgPool2d(1)(x), _tf_same_pool_reference(x, 2, 1, lambda w: w.mean(-1)), rtol=0, atol=1e-15)
    # stride 2: one zero row and column padded at the end, every window divided by 4
    padded = torch.nn.functional.pad(x, (0, 1, 0, 1))
    out = side // 2 + (side % 2)
    ref = torch.stack([torch.stack([padded[..., 2 * i:2 * i + 2, 2 * j:2 * j + 2].sum((-1, -2)) / 4 for j in range(out)], -1)
                       for i in range(out)], -2)
    torch.testing.assert_close(TFAvgPool2d(2)(x), ref, rtol=0, atol=1e-15)


def test_sk_networks_train_and_rebuild_from_their_weights():
    from simclr.model.resnet import resnet_from_state_dict

    torch.manual_seed(0)
    for arch, cifar in (("resnet50", False), ("resnet18", True)):
        enc = build_encoder(arch, width=0.125, cifar_stem=cifar, sk_ratio=0.0625, stage1_projection=True)
        x = torch.rand(4, 3, 32, 32)
        enc(x).square().mean().backward()
        assert all(p.grad is not None for p in enc.parameters())
        enc.eval()
        rebuilt = resnet_from_state_dict(enc.state_dict()).eval()
        assert rebuilt.sk_ratio == 0.0625 and rebuilt.cifar_stem == cifar
        torch.testing.assert_close(rebuilt(x), enc(x), rtol=0, atol=0)
    with torch.device("meta"):  # wide networks: shapes only
        for width, ratio in ((4, 0.125), (2, 0.02), (1, 0.01), (0.125, 0.0625)):
            wide = build_encoder("resnet50", width=width, sk_ratio=ratio)
            rebuilt = resnet_from_state_dict(dict(wide.state_dict()))
            assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in wide.state_dict().items()}
