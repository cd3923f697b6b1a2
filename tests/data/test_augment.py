"""Batched SimCLR augmentation: shapes, ranges, per-image draws, probabilities, switches."""

import pytest
import torch

from simclr.data.augment import (
    SimCLRAugment,
    center_resize,
    hsv_to_rgb,
    rgb_to_grayscale,
    rgb_to_hsv,
)


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
    hf = lambda t: (t[..., 1:] - t[..., :-1]).abs().mean((1, 2, 3))
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


@pytest.mark.parametrize("kwargs", [{"crop_scale": (0.5, 0.1)}, {"gray_p": 1.5}, {"color_strength": -1.0}, {"blur_sigma": (0.0, 1.0)}])
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
    from simclr.data.augment import (
        adjust_saturation_hsv,
        hsv_to_rgb,
        rgb_to_grayscale,
        rgb_to_hsv,
    )

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
    from simclr.data import augment

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
    from simclr.data import augment

    aug = SimCLRAugment(24, blur_p=1.0, color_strength=1.0)
    x = torch.randint(0, 256, (16, 3, 32, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    draws = aug.draw(16, 32, 28, "cpu", torch.Generator().manual_seed(2))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(augment, "_indexing_pays", lambda x: False)
        eager = aug.apply(x, draws)
    compiled = aug.compile()._apply(x, draws)
    torch.testing.assert_close(compiled, eager, atol=2e-5, rtol=0)


# -- issue 12: Figure 4's transformations and a list of transformations per view ---------------------------------

_PLAIN = {"crop": False, "flip_p": 0.0, "color_p": 0.0, "gray_p": 0.0, "blur_p": 0.0}  # the default chain switched off


def _float_images(n=16, side=32, seed=0, lo=0.0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, side, side, generator=g) * (1 - lo) + lo


@pytest.mark.parametrize("keys", [{}, {"convention": "torchvision", "blur_p": 0.5}, {"blur_p": 1.0, "color_strength": 1.0},
                                  {"crop": False}, {"color": False, "grayscale": False, "blur_p": 0.5}])
@pytest.mark.parametrize("masked", [False, True])
def test_default_views_are_bit_identical_to_the_chain_before_view_lists(keys, masked, monkeypatch):
    """augment.view1 = view2 = simclr (the default) computes what the augmentation computed before the view lists:
    the same draws from the same generator, the same bits, on the indexed (eager CPU) and masked paths, for whole
    images of the output size or larger, and for precropped views. The reference is a frozen copy of that code."""
    import augment_v1_reference as reference

    from simclr.data import augment

    if masked:
        monkeypatch.setattr(augment, "_indexing_pays", lambda x: False)
        monkeypatch.setattr(reference, "_indexing_pays", lambda x: False)
    for size, shape in ((32, (8, 3, 32, 32)), (24, (8, 3, 36, 28))):
        old, new = reference.SimCLRAugment(size, **keys), SimCLRAugment(size, **keys)
        x = torch.randint(0, 256, shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(size))
        assert torch.equal(new(x, torch.Generator().manual_seed(1)), old(x, torch.Generator().manual_seed(1)))
        g_old, g_new = torch.Generator().manual_seed(2), torch.Generator().manual_seed(2)
        for a, b in zip(new.views(x, g_new), (old(x, g_old), old(x, g_old))):
            assert torch.equal(a, b)
        pre = torch.randint(0, 256, (6, 2, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
        g_old, g_new = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
        for a, b in zip(new.views(pre, g_new), old.views(pre, g_old)):
            assert torch.equal(a, b)


def test_simclr_is_crop_colour_blur_and_the_call_is_the_full_chain():
    x = torch.randint(0, 256, (12, 3, 36, 30), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    full = SimCLRAugment(24, blur_p=0.5, color_strength=1.0)
    listed = SimCLRAugment(24, blur_p=0.5, color_strength=1.0, view1="crop, colour, blur", view2="sobel")
    assert listed.cfg.view1 == "crop,color,blur" and listed.cfg.view2 == "sobel"  # written canonically
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert torch.equal(listed(x, g1, view=1), full(x, g2))
    # without ``view`` a call is the full chain whatever the lists say (what evaluation and plots expect)
    assert torch.equal(listed(x, torch.Generator().manual_seed(6)), full(x, torch.Generator().manual_seed(6)))
    assert listed.view_crops() == (True, False) and full.view_crops() == (True, True)
    with pytest.raises(ValueError, match="view"):
        full(x, view=3)


def test_sobel_of_a_constant_image_is_zero_and_of_an_image_its_scaled_gradient_magnitude():
    from simclr.data.augment import sobel, sobel_magnitude

    aug = SimCLRAugment(16, view1="sobel")
    flat = torch.tensor([0.0, 0.3, 1.0]).view(3, 1, 1, 1).expand(3, 3, 16, 16) * torch.tensor([1.0, 0.5, 0.2]).view(1, 3, 1, 1)
    out = aug(flat, torch.Generator().manual_seed(0), view=1)
    assert torch.equal(out, torch.zeros_like(out))
    # a float64 transcription: luma, reflect padding, the 3x3 Sobel kernels, |(Gx, Gy)|, over the image's maximum
    x = _float_images(4, 16)
    gray = (0.2989 * x[:, 0] + 0.5870 * x[:, 1] + 0.1140 * x[:, 2]).unsqueeze(1).double()
    kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], dtype=torch.float64)
    padded = torch.nn.functional.pad(gray, (1, 1, 1, 1), mode="reflect")
    gx = torch.nn.functional.conv2d(padded, kx.view(1, 1, 3, 3))
    gy = torch.nn.functional.conv2d(padded, kx.t().reshape(1, 1, 3, 3))
    mag = (gx**2 + gy**2).sqrt()
    assert (sobel_magnitude(x).double() - mag).abs().max() < 1e-5
    ref = (mag / mag.amax((2, 3), keepdim=True)).expand(-1, 3, -1, -1)
    out = aug(x, torch.Generator().manual_seed(0), view=1)
    assert (out.double() - ref).abs().max() < 1e-5 and torch.equal(out, sobel(x))
    assert torch.equal(out[:, 0], out[:, 1]) and torch.equal(out[:, 1], out[:, 2])
    assert torch.allclose(out.amax((1, 2, 3)), torch.ones(4))  # each Sobel view spans [0, 1]
    # sobel_p: the images that did not draw it are untouched
    half = SimCLRAugment(16, view1="sobel", sobel_p=0.5)(x.repeat(8, 1, 1, 1), torch.Generator().manual_seed(1), view=1)
    kept = (half == x.repeat(8, 1, 1, 1)).flatten(1).all(1)
    assert ((half == sobel(x).repeat(8, 1, 1, 1)).flatten(1).all(1) | kept).all() and 0.25 < kept.float().mean() < 0.75


def test_four_quarter_turns_give_the_original_and_each_drawn_rotation_is_rot90():
    aug = SimCLRAugment(12, view1="rotate")
    x = _float_images(64, 12)
    once = {"k": torch.ones(64, dtype=torch.long)}
    y = x
    for _ in range(4):
        y = aug._rotate(y, once, False)
        if _ < 3:
            assert not torch.equal(y, x)
    assert torch.equal(y, x)
    d = aug.draw(64, 12, 12, "cpu", torch.Generator().manual_seed(0), view=1)
    out = aug.apply(x, d, view=1)
    k = d["rotate.k"]
    assert set(k.tolist()) == {1, 2, 3}  # rotate_p = 1: always one of 90, 180, 270 degrees
    for i in range(64):
        assert torch.equal(out[i], torch.rot90(x[i], int(k[i]), (1, 2)))
    assert torch.equal(out, aug(x, torch.Generator().manual_seed(0), view=1))
    some = SimCLRAugment(12, view1="rotate", rotate_p=0.5).draw(2000, 12, 12, "cpu", torch.Generator().manual_seed(1), view=1)
    counts = torch.bincount(some["rotate.k"], minlength=4).float() / 2000
    assert abs(counts[0] - 0.5) < 0.05 and all(abs(c - 1 / 6) < 0.04 for c in counts[1:])


def test_noise_has_the_configured_std_and_mean_zero():
    x = torch.full((256, 3, 16, 16), 0.5)  # away from the clamp: 0.5 is 10 standard deviations from 0 and 1
    aug = SimCLRAugment(16, view1="noise", noise_std=0.05)
    noise = aug(x, torch.Generator().manual_seed(0), view=1) - x
    n = noise.numel()
    assert abs(noise.mean().item()) < 4 * 0.05 / n**0.5
    assert abs(noise.std().item() - 0.05) < 0.002
    per_image = noise.flatten(1).std(1)  # every image drew noise (noise_p = 1)
    assert (per_image > 0.04).all() and (per_image < 0.06).all()
    # noise_p = 0.5: the images that did not draw it are untouched; values stay clipped to [0, 1]
    out = SimCLRAugment(16, view1="noise", noise_std=0.5, noise_p=0.5)(x, torch.Generator().manual_seed(1), view=1)
    kept = (out == x).flatten(1).all(1)
    assert 0.4 < kept.float().mean() < 0.6 and out.min() == 0 and out.max() == 1


@pytest.mark.parametrize("frac,side", [(0.5, 16), (0.25, 8), (1.0, 32)])
def test_cutout_zeroes_exactly_one_square_of_the_configured_size(frac, side):
    x = _float_images(200, 32, lo=0.1)  # no zero pixel to begin with
    aug = SimCLRAugment(32, view1="cutout", cutout_frac=frac)
    assert aug.cutout_side == side
    out = aug(x, torch.Generator().manual_seed(0), view=1)
    zero = out == 0
    assert torch.equal(zero[:, 0], zero[:, 1]) and torch.equal(zero[:, 1], zero[:, 2])  # all channels
    tops, lefts = [], []
    for i in range(200):
        rows, cols = zero[i, 0].any(1).nonzero().squeeze(1), zero[i, 0].any(0).nonzero().squeeze(1)
        top, left = int(rows[0]), int(cols[0])
        assert len(rows) == len(cols) == side and int(zero[i, 0].sum()) == side * side  # one side x side square
        assert zero[i, 0, top : top + side, left : left + side].all()
        tops.append(top)
        lefts.append(left)
    assert torch.equal(out[~zero], x[~zero])  # nothing else changes
    if side < 32:  # placed wholly inside the view, anywhere
        assert min(tops) == min(lefts) == 0 and max(tops) == max(lefts) == 32 - side
    half = SimCLRAugment(32, view1="cutout", cutout_p=0.5)(x, torch.Generator().manual_seed(1), view=1)
    kept = (half == x).flatten(1).all(1)
    assert 0.35 < kept.float().mean() < 0.65 and ((half == 0).flatten(1).sum(1)[~kept] == 3 * 16 * 16).all()


def test_per_view_lists_give_what_they_say():
    """view1 "crop,sobel": a random resized crop (and flip) of the image, then its Sobel view; view2 "": the image
    itself (resized whole to the output size), nothing else."""
    from simclr.data.augment import sobel

    x = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    aug = SimCLRAugment(32, view1="crop,sobel", view2="")
    assert aug.cfg.view2 == "none" and aug.view_crops() == (True, False)
    v1, v2 = aug.views(x, torch.Generator().manual_seed(1))
    assert torch.equal(v2, x.float() / 255)
    g = torch.Generator().manual_seed(1)
    d = aug.draw(16, 32, 32, "cpu", g, view=1)
    assert sorted(d) == ["crop.box", "crop.flip", "sobel.on"] and aug.draw(16, 32, 32, "cpu", g, view=2) == {}
    crop_only = SimCLRAugment(32, view1="crop")
    cropped = crop_only.apply(x, {k: v for k, v in d.items() if k.startswith("crop.")}, view=1)
    assert torch.equal(v1, sobel(cropped)) and not torch.equal(cropped, x.float() / 255)
    # larger or non-square images: "" is the whole image resized, as augment.crop false does without the flip
    big = torch.randint(0, 256, (16, 3, 40, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    _, w2 = aug.views(big, torch.Generator().manual_seed(1))
    assert torch.equal(w2, SimCLRAugment(32, **_PLAIN)(big))
    # precropped views (the loader's crops) stay as they come for ""; "crop" only flips them (the crop was the loader's)
    pre = torch.randint(0, 256, (16, 2, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    p1, p2 = aug.views(pre, torch.Generator().manual_seed(1))
    assert torch.equal(p2, pre[:, 1].float() / 255)
    flip = aug.draw(16, 32, 32, "cpu", torch.Generator().manual_seed(1), precropped=True, view=1)["crop.flip"]
    first = pre[:, 0].float() / 255
    assert torch.equal(p1, torch.where(flip.view(-1, 1, 1, 1), sobel(first.flip(-1)), sobel(first))) and flip.any()
    # a crop later in the list crops the S x S view: order matters
    a = SimCLRAugment(32, view1="sobel,crop", flip_p=0.0)(x, torch.Generator().manual_seed(1), view=1)
    assert not torch.equal(a, SimCLRAugment(32, view1="crop,sobel", flip_p=0.0)(x, torch.Generator().manual_seed(1), view=1))


def test_draw_then_apply_is_the_call_for_every_view():
    aug = SimCLRAugment(24, view1="rotate,cutout,noise,color,flip", view2="crop,sobel,jitter,gray,blur", blur_p=0.5)
    x = torch.randint(0, 256, (6, 3, 30, 24), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    for view in (None, 1, 2):
        whole = aug(x, torch.Generator().manual_seed(5), view=view)
        draws = aug.draw(6, 30, 24, "cpu", torch.Generator().manual_seed(5), view=view)
        assert whole.shape == (6, 3, 24, 24) and torch.equal(aug.apply(x, draws, view=view), whole)
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    v1, v2 = aug.views(x, g1)
    assert torch.equal(v1, aug(x, g2, view=1)) and torch.equal(v2, aug(x, g2, view=2))


@pytest.mark.parametrize("value,match", [
    ("crop,sobl", (r"augment\.view1: unknown transformation 'sobl' \(a view is simclr, none, or a comma list of crop, "
                  r"flip, color, jitter, gray, blur, cutout, sobel, noise, rotate\); did you mean 'sobel'\?")),
    ("rotation", r"augment\.view1: unknown transformation 'rotation'.*did you mean 'rotate'\?"),
    ("simclr,blur", r"augment\.view1 names blur twice"),
    ("none,crop", r"augment\.view1: 'none' cannot be combined"),
])
def test_bad_view_lists_are_one_line_config_errors_naming_the_key(value, match, tmp_path, capsys):
    from simclr.cli import main
    from simclr.config import Config, ConfigError, apply_overrides

    with pytest.raises(ConfigError, match=match) as e:
        apply_overrides(Config(), [("augment.view1", value)])
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match=match.replace("view1", "view2")):
        SimCLRAugment(32, view2=value)
    assert main(["pretrain", "--data", "synthetic", "--out", str(tmp_path / "run"), "--augment.view1", value]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "augment.view1" in err and "Traceback" not in err, err
    assert not (tmp_path / "run").exists()


def test_view_lists_round_trip_and_a_named_blur_is_on_at_small_sizes(tmp_path):
    from simclr.config import (
        AugmentConfig,
        Config,
        apply_overrides,
        load_config,
        resolve_augment,
        save_config,
    )

    cfg = apply_overrides(Config(), [("augment.view1", "[Crop, Sobel]"), ("augment.view2", "")])
    assert (cfg.augment.view1, cfg.augment.view2) == ("crop,sobel", "none")
    save_config(cfg, tmp_path / "c.yaml")
    back = load_config(tmp_path / "c.yaml")
    assert (back.augment.view1, back.augment.view2) == ("crop,sobel", "none")
    # blur_p auto is 0 at 32 px for the paper's chain, 0.5 where a view names blur itself (a listed blur applies)
    assert resolve_augment(AugmentConfig(), 32).blur_p == 0.0
    assert resolve_augment(AugmentConfig(view2="blur"), 32).blur_p == 0.5
    assert resolve_augment(AugmentConfig(view2="blur", blur_p=0.2), 32).blur_p == 0.2


def test_new_transformations_compile_as_one_graph_given_their_draws():
    aug = SimCLRAugment(32, view1="crop,cutout,sobel,noise,rotate", view2="rotate,noise,flip,color,blur", blur_p=0.5)
    x = torch.rand(8, 3, 40, 36)
    for view in (1, 2):
        draws = aug.draw(8, 40, 36, "cpu", torch.Generator().manual_seed(0), view=view)
        explained = torch._dynamo.explain(aug.apply)(x, draws, False, view)
        assert explained.graph_break_count == 0 and explained.graph_count == 1, explained.break_reasons


@pytest.mark.slow
def test_compiled_new_transformations_equal_eager():
    aug = SimCLRAugment(24, view1="cutout,sobel,noise,rotate")
    x = torch.randint(0, 256, (16, 3, 24, 24), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    draws = aug.draw(16, 24, 24, "cpu", torch.Generator().manual_seed(2), view=1)
    eager = aug.apply(x, draws, view=1)
    compiled = aug.compile()._apply(x, draws, False, 1)
    torch.testing.assert_close(compiled, eager, atol=2e-5, rtol=0)
