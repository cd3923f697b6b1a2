"""Batched SimCLR augmentation: shapes, ranges, per-image draws, probabilities, switches."""

import pytest
import torch

from simclr.data.augment import SimCLRAugment, center_resize, hsv_to_rgb, rgb_to_grayscale, rgb_to_hsv


def _images(n=64, side=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, side, side), generator=g, dtype=torch.uint8)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
@pytest.mark.parametrize("size", [32, 24, 64])
def test_shape_dtype_range(dtype, size):
    x = _images()
    if dtype == torch.float32:
        x = x.float() / 255
    out = SimCLRAugment(size)(x, torch.Generator().manual_seed(1))
    assert out.shape == (64, 3, size, size)
    assert out.dtype == torch.float32
    assert out.min() >= 0 and out.max() <= 1


def test_non_square_input():
    x = torch.rand(4, 3, 30, 50)
    assert SimCLRAugment(32)(x).shape == (4, 3, 32, 32)


def test_bad_input_shape():
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        SimCLRAugment(32)(torch.rand(3, 32, 32))


def test_grayscale_fraction_per_batch():
    """Acceptance check 4: over 10 batches of 1000 images, each batch's grayscale share is in 0.15-0.25."""
    aug = SimCLRAugment(32)
    g = torch.Generator().manual_seed(0)
    for i in range(10):
        x = _images(1000, 32, seed=i)
        out = aug(x, g)
        gray = (out[:, 0] == out[:, 1]).flatten(1).all(1) & (out[:, 1] == out[:, 2]).flatten(1).all(1)
        frac = gray.float().mean().item()
        assert 0.15 <= frac <= 0.25, frac


def test_every_image_gets_its_own_draw():
    # The same image repeated: with per-image parameters, the outputs differ from each other.
    x = _images(1, 32).repeat(16, 1, 1, 1)
    out = SimCLRAugment(32)(x, torch.Generator().manual_seed(0))
    distinct = {tuple(o.flatten()[:50].tolist()) for o in out}
    assert len(distinct) == 16


def test_two_calls_give_different_views_and_seeded_calls_repeat():
    x = _images(8, 32)
    aug = SimCLRAugment(32)
    g = torch.Generator().manual_seed(3)
    a, b = aug(x, g), aug(x, g)
    assert not torch.equal(a, b)
    g2 = torch.Generator().manual_seed(3)
    torch.testing.assert_close(aug(x, g2), a)


def test_everything_off_is_identity_at_same_size():
    x = _images(8, 32)
    aug = SimCLRAugment(32, crop=False, flip_p=0.0, color_p=0.0, gray_p=0.0, blur_p=0.0)
    torch.testing.assert_close(aug(x), x.float() / 255)


def test_flip_only_flips_about_half():
    x = _images(2000, 8)
    aug = SimCLRAugment(8, crop=False, flip_p=0.5, color_p=0.0, gray_p=0.0, blur_p=0.0)
    out = aug(x, torch.Generator().manual_seed(0))
    ref = x.float() / 255
    same = (out - ref).abs().flatten(1).amax(1) < 1e-5
    flipped = (out - ref.flip(-1)).abs().flatten(1).amax(1) < 1e-5
    assert (same | flipped).all()
    assert 0.45 < flipped.float().mean().item() < 0.55


def test_paper_defaults_depend_on_size():
    small, large = SimCLRAugment(32), SimCLRAugment(224)
    assert small.color_strength == 0.5 and small.blur_p == 0.0
    assert large.color_strength == 1.0 and large.blur_p == 0.5


def test_blur_smooths():
    x = _images(32, 64)
    aug = SimCLRAugment(64, crop=False, flip_p=0.0, color_p=0.0, gray_p=0.0, blur_p=1.0, blur_sigma=(1.0, 2.0))
    out = aug(x)
    ref = x.float() / 255
    # high-frequency energy drops for every image (sigma >= 1 px is a clear blur)
    hf = lambda t: (t[..., 1:] - t[..., :-1]).abs().mean((1, 2, 3))  # noqa: E731
    assert (hf(out) < 0.6 * hf(ref)).all()
    # with p = 0.5 about half the images are blurred, the rest untouched
    half = SimCLRAugment(64, crop=False, flip_p=0.0, color_p=0.0, gray_p=0.0, blur_p=0.5, blur_sigma=(1.0, 2.0))
    out = half(x.repeat(8, 1, 1, 1), torch.Generator().manual_seed(0))
    untouched = (out - ref.repeat(8, 1, 1, 1)).abs().flatten(1).amax(1) < 1e-6
    assert 0.3 < untouched.float().mean().item() < 0.7
    assert abs(out.mean() - ref.mean()) < 0.01  # the kernel is normalised


def test_color_jitter_keeps_grayscale_structure_and_changes_colours():
    x = _images(64, 16)
    aug = SimCLRAugment(16, crop=False, flip_p=0.0, color_p=1.0, gray_p=0.0, blur_p=0.0, color_strength=1.0)
    out = aug(x, torch.Generator().manual_seed(0))
    assert (out - x.float() / 255).abs().flatten(1).amax(1).min() > 0.01


def test_hsv_roundtrip_and_gray():
    x = torch.rand(4, 3, 8, 8)
    torch.testing.assert_close(hsv_to_rgb(rgb_to_hsv(x)), x, atol=1e-5, rtol=0)
    g = rgb_to_grayscale(torch.ones(1, 3, 2, 2))
    torch.testing.assert_close(g, torch.full((1, 1, 2, 2), 0.9999), atol=1e-4, rtol=0)


def test_center_resize():
    x = _images(2, 40)
    assert center_resize(x, 32).shape == (2, 3, 32, 32)
    torch.testing.assert_close(center_resize(x, 40), x.float() / 255)


@pytest.mark.parametrize("kwargs", [dict(crop_scale=(0.5, 0.1)), dict(gray_p=1.5), dict(color_strength=-1.0), dict(blur_sigma=(0.0, 1.0))])
def test_invalid_settings(kwargs):
    with pytest.raises(ValueError):
        SimCLRAugment(32, **kwargs)


# -- the official convention's pieces, against float64 transcriptions ------------------------


def test_official_saturation_is_tf_adjust_saturation():
    """tf.image.adjust_saturation: to HSV, S times the factor, clip to [0, 1], back (colorsys as the reference)."""
    import colorsys

    from simclr.data.augment import adjust_saturation_hsv

    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 3, 6, 7, generator=g)
    x[0, :, 0, 0] = torch.tensor([0.3, 0.3, 0.3])  # a grey pixel: S = 0 stays 0
    factors = torch.tensor([0.2, 1.0, 1.8, 0.0])
    ours = adjust_saturation_hsv(x, factors).double()
    ref = torch.empty_like(ours)
    for b in range(4):
        for i in range(6):
            for j in range(7):
                h, s, v = colorsys.rgb_to_hsv(*x[b, :, i, j].double().tolist())
                ref[b, :, i, j] = torch.tensor(colorsys.hsv_to_rgb(h, min(1.0, max(0.0, s * factors[b].item())), v))
    assert (ours - ref).abs().max() < 1e-5
    # the blend of the torchvision convention is another operation (up to ~0.6 apart on saturated colours)
    blend = SimCLRAugment(7, convention="torchvision")
    assert blend.official is False and SimCLRAugment(7).official is True


def test_official_blur_zero_pads_with_one_sigma_per_batch():
    """batch_random_blur: one sigma for the batch, depthwise 'SAME' convolution (zeros outside), kernel side//10."""
    size = 40
    x = torch.rand(6, 3, size, size, generator=torch.Generator().manual_seed(1))
    aug = SimCLRAugment(size, crop=False, flip_p=0.0, color_p=0.0, gray_p=0.0, blur_p=1.0)
    out = aug(x, torch.Generator().manual_seed(5))
    # the draws, in the order the augmentation makes them: the flip, the blur switch, then one sigma
    g = torch.Generator().manual_seed(5)
    torch.rand(6, generator=g)  # flip
    torch.rand(6, generator=g)  # blur on/off
    sigma = torch.rand(1, generator=g).item() * 1.9 + 0.1
    radius = (size // 10) // 2
    taps = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-taps**2 / (2 * sigma**2))
    k = k / k.sum()
    xd = x.double()
    ref = torch.zeros_like(xd)
    padded = torch.nn.functional.pad(xd, (radius,) * 4)  # zeros
    for dy in range(2 * radius + 1):
        for dx in range(2 * radius + 1):
            ref += k[dy] * k[dx] * padded[:, :, dy : dy + size, dx : dx + size]
    assert (out.double() - ref).abs().max() < 1e-5
    # the border darkens (zeros come in), as in the official code; reflect padding would not
    flat = torch.full((1, 3, size, size), 0.5)
    edge = aug(flat, torch.Generator().manual_seed(5))
    assert edge[0, :, 0, 0].max() < 0.45 and torch.allclose(edge[0, :, size // 2, size // 2], torch.tensor(0.5))
    tv = SimCLRAugment(size, crop=False, flip_p=0.0, color_p=0.0, gray_p=0.0, blur_p=1.0, convention="torchvision")
    assert torch.allclose(tv(flat, torch.Generator().manual_seed(5)), flat, atol=1e-6)


def test_precropped_views_are_only_flipped_and_coloured():
    x = torch.randint(0, 256, (8, 3, 12, 12), dtype=torch.uint8)
    aug = SimCLRAugment(12, color_p=0.0, gray_p=0.0, blur_p=0.0)
    out = aug(x, torch.Generator().manual_seed(0), precropped=True)
    ref = x.float() / 255
    same = (out - ref).abs().flatten(1).amax(1) < 1e-6
    flipped = (out - ref.flip(-1)).abs().flatten(1).amax(1) < 1e-6
    assert (same | flipped).all() and flipped.any() and same.any()
    with pytest.raises(ValueError, match="12x12"):
        aug(torch.zeros(2, 3, 10, 12), precropped=True)
    v1, v2 = aug.views(torch.stack((x, x.flip(-1)), 1), torch.Generator().manual_seed(0))
    assert v1.shape == v2.shape == (8, 3, 12, 12)


# -- no host synchronisation: masks instead of index lists, the same arithmetic per image ---------------------


def _indexed_color(aug, x, g):
    """The colour distortion as the first releases computed it (index_select / index_copy per operation)."""
    from simclr.data.augment import adjust_saturation_hsv, hsv_to_rgb, rgb_to_grayscale, rgb_to_hsv

    b, dev, s = x.shape[0], x.device, float(aug.color_strength)
    on = torch.rand(b, device=dev, generator=g) < aug.color_p
    lo, hi = max(0.0, 1 - 0.8 * s), 1 + 0.8 * s
    factors = [torch.rand(b, device=dev, generator=g) * (hi - lo) + lo for _ in range(3)]
    hue = torch.rand(b, device=dev, generator=g) * (0.4 * s) - 0.2 * s
    order = torch.rand(b, 4, device=dev, generator=g).argsort(1)
    for slot in range(4):
        for op in range(4):
            idx = torch.nonzero(on & (order[:, slot] == op)).squeeze(1)
            if idx.numel() == 0:
                continue
            xi = x.index_select(0, idx)
            if op == 0:
                xi = xi * factors[0][idx].view(-1, 1, 1, 1)
            elif op == 1:
                f = factors[1][idx].view(-1, 1, 1, 1)
                mean = xi.mean((2, 3), keepdim=True)
                xi = (xi - mean) * f + mean
            elif op == 2 and aug.official:
                xi = adjust_saturation_hsv(xi, factors[2][idx])
            elif op == 2:
                f = factors[2][idx].view(-1, 1, 1, 1)
                gray = rgb_to_grayscale(xi)
                xi = (xi - gray) * f + gray
            else:
                hsv = rgb_to_hsv(xi)
                hsv[:, 0] = (hsv[:, 0] + hue[idx].view(-1, 1, 1)) % 1.0
                xi = hsv_to_rgb(hsv)
            x = x.index_copy(0, idx, xi.clamp_(0.0, 1.0))
    return x


@pytest.mark.parametrize("convention", ["official", "torchvision"])
def test_masked_colour_and_blur_are_bit_identical_to_the_indexed_ones(convention, monkeypatch):
    """Accelerators and compiled code take the masked path (no host synchronisation), eager CPU the indexed one:
    for the same draws both give the same bits, and the indexed one is the first releases' computation."""
    import simclr.data.augment as augment

    # sigma from 0.5: at 0.1 a 3-tap kernel is the identity in float32, and "the blur changed x" would not hold
    aug = SimCLRAugment(24, convention=convention, color_strength=1.0, color_p=0.8, blur_p=0.5, blur_sigma=(0.5, 2.0))
    for seed in range(3):
        x = torch.rand(64, 3, 24, 24, generator=torch.Generator().manual_seed(100 + seed))
        colour = aug._draw_color(64, "cpu", torch.Generator().manual_seed(seed))
        blur = aug._draw_gray_blur(64, "cpu", torch.Generator().manual_seed(seed))
        indexed = aug._color(x.clone(), colour)
        first = _indexed_color(aug, x.clone(), torch.Generator().manual_seed(seed))
        blur_indexed = aug._blur(x.clone(), blur)
        monkeypatch.setattr(augment, "_indexing_pays", lambda x: False)
        masked = aug._color(x.clone(), colour)
        blur_masked = aug._blur(x.clone(), blur)
        monkeypatch.undo()
        assert torch.equal(indexed, first) and torch.equal(masked, indexed) and not torch.equal(masked, x)
        assert torch.allclose(blur_masked, blur_indexed, rtol=0, atol=1e-6) and not torch.equal(blur_masked, x)


def test_augmentation_compiles_as_one_graph_given_its_draws():
    """No data-dependent shapes or host reads: torch.compile(fullgraph=True) accepts the whole chain once the
    generator stays outside (the draws are made by the same code, from the same seed)."""
    aug = SimCLRAugment(32, blur_p=0.5, color_strength=1.0)
    explained = torch._dynamo.explain(lambda x: aug(x, None))(torch.rand(8, 3, 40, 40))
    assert explained.graph_break_count == 0, explained.break_reasons
    draws = aug.draw(8, 40, 40, "cpu", torch.Generator().manual_seed(0))
    explained = torch._dynamo.explain(aug.apply)(torch.rand(8, 3, 40, 40), draws)
    assert explained.graph_break_count == 0 and explained.graph_count == 1, explained.break_reasons


def test_draw_then_apply_is_the_call():
    """``aug(x, g)`` is ``aug.apply(x, aug.draw(..., g))``: the split the compiled training step uses draws the
    same numbers in the same order."""
    for keys in ({}, {"convention": "torchvision", "blur_p": 0.5}, {"crop": False, "color": False}):
        aug = SimCLRAugment(24, **keys)
        x = torch.randint(0, 256, (6, 3, 30, 24), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
        whole = aug(x, torch.Generator().manual_seed(5))
        draws = aug.draw(6, 30, 24, "cpu", torch.Generator().manual_seed(5))
        assert torch.equal(aug.apply(x, draws), whole)


@pytest.mark.slow
def test_compiled_augmentation_equals_eager():
    """``SimCLRAugment.compile()`` (what ``train.compile`` turns on): one Inductor graph, the eager masked
    result to float rounding, for the same draws."""
    import simclr.data.augment as augment

    aug = SimCLRAugment(24, blur_p=1.0, color_strength=1.0)
    x = torch.randint(0, 256, (16, 3, 32, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    draws = aug.draw(16, 32, 28, "cpu", torch.Generator().manual_seed(2))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(augment, "_indexing_pays", lambda x: False)
        eager = aug.apply(x, draws)
    compiled = aug.compile()._apply(x, draws)
    torch.testing.assert_close(compiled, eager, atol=2e-5, rtol=0)
