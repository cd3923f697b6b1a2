"""NT-Logistic and margin triplet (the paper's Table 2, with Table 4's semi-hard mining) against float64 loop
transcriptions of the formulas documented in ``simclr.model.losses``: per anchor, per negative."""

import math

import pytest
import torch

from simclr.model.losses import (
    contrastive_logits,
    margin_triplet,
    margin_triplet_with_accuracy,
    negative_mask,
    nt_logistic,
    nt_logistic_with_accuracy,
    nt_xent,
    semi_hard_negative,
)

# -- the reference: plain loops over anchors and negatives ------------------------------------------


def sim(u, v, l2):
    """s(u, v): cosine similarity, or the raw dot product without l2 normalisation."""
    return (u @ v) / (u.norm() * v.norm()) if l2 else u @ v


def anchors(z1_all, z2_all, images, l2):
    """For each view (k, v) of the given images, as an anchor against the 2M views of the batch:
    (its similarity to the positive, the other view of image k; the list of its similarities to every view
    of every other image, its 2M - 2 negatives)."""
    m = z1_all.shape[0]
    view = {}
    for j in range(m):
        view[(j, 0)] = z1_all[j]
        view[(j, 1)] = z2_all[j]
    out = []
    for k in images:
        for v in (0, 1):
            a = view[(k, v)]
            s_pos = sim(a, view[(k, 1 - v)], l2)
            s_negs = [sim(a, view[(j, w)], l2) for j in range(m) for w in (0, 1) if j != k]
            assert len(s_negs) == 2 * m - 2
            out.append((s_pos, s_negs))
    return out


def semi_hard_pick(s_pos, s_negs):
    """The documented rule: the most similar negative strictly less similar than the positive; if there is
    none, the least similar negative. Returns (its similarity, whether it was the fallback)."""
    below = [s for s in s_negs if s < s_pos]
    if below:
        return max(below), False
    return min(s_negs), True


def ref_nt_logistic(z1_all, z2_all, tau, images=None, semi_hard=False, l2=True):
    """L = mean over anchors of  -log sigma(s+/tau) + mean over negatives of -log sigma(-s-/tau)
    (semi-hard: the one chosen negative). Returns (L, number of anchors that fell back)."""
    images = range(z1_all.shape[0]) if images is None else images
    total, fallbacks, rows = 0.0, 0, anchors(z1_all, z2_all, images, l2)
    for s_pos, s_negs in rows:
        positive_term = -torch.log(torch.sigmoid(s_pos / tau))
        if semi_hard:
            s_neg, fell_back = semi_hard_pick(s_pos, s_negs)
            fallbacks += fell_back
            negative_term = -torch.log(torch.sigmoid(-s_neg / tau))
        else:
            negative_term = 0.0
            for s_neg in s_negs:
                negative_term = negative_term - torch.log(torch.sigmoid(-s_neg / tau))
            negative_term = negative_term / len(s_negs)
        total = total + positive_term + negative_term
    return total / len(rows), fallbacks


def ref_margin_triplet(z1_all, z2_all, margin, images=None, semi_hard=False, l2=True):
    """L = mean over anchors of  mean over negatives of max(0, s- - s+ + m)  (semi-hard: the one chosen
    negative). Returns (L, number of anchors that fell back)."""
    images = range(z1_all.shape[0]) if images is None else images
    total, fallbacks, rows = 0.0, 0, anchors(z1_all, z2_all, images, l2)
    for s_pos, s_negs in rows:
        if semi_hard:
            s_neg, fell_back = semi_hard_pick(s_pos, s_negs)
            fallbacks += fell_back
            term = torch.clamp(s_neg - s_pos + margin, min=0.0)
        else:
            term = 0.0
            for s_neg in s_negs:
                term = term + torch.clamp(s_neg - s_pos + margin, min=0.0)
            term = term / len(s_negs)
        total = total + term
    return total / len(rows), fallbacks


def _ours(name, z1, z2, p, **kw):
    return (nt_logistic if name == "nt_logistic" else margin_triplet)(z1, z2, p, **kw)


def _ref(name, z1_all, z2_all, p, **kw):
    return (ref_nt_logistic if name == "nt_logistic" else ref_margin_triplet)(z1_all, z2_all, p, **kw)


def _batch(n, d, l2, seed):
    """Random projections in float64 where image 0's views point apart (its positive is the least similar
    view, so its anchors exercise the semi-hard fallback) and the last image's agree (a semi-hard negative
    below the positive always exists). Without l2 normalisation, scaled so that dot products are O(1)."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, d, generator=g, dtype=torch.float64)
    b = torch.randn(n, d, generator=g, dtype=torch.float64)
    b[0] = -a[0] + 0.05 * torch.randn(d, generator=g, dtype=torch.float64)
    b[-1] = a[-1] + 0.05 * torch.randn(d, generator=g, dtype=torch.float64)
    if not l2:
        a, b = a * d**-0.5, b * d**-0.5
    return a, b


# (n, d, tau of NT-Logistic, m of margin triplet)
CASES = [(2, 3, 0.5, 0.5), (5, 8, 0.1, 0.2), (8, 16, 1.0, 1.0), (13, 4, 0.07, 0.0), (4, 128, 0.2, 1.6)]


@pytest.mark.parametrize("name", ["nt_logistic", "margin_triplet"])
@pytest.mark.parametrize("semi_hard", [False, True], ids=["all", "sh"])
@pytest.mark.parametrize("l2", [True, False], ids=["l2", "nol2"])
@pytest.mark.parametrize("n,d,tau,margin", CASES)
def test_matches_the_loop_transcription_values_and_gradients(name, semi_hard, l2, n, d, tau, margin):
    p = tau if name == "nt_logistic" else margin
    a, b = _batch(n, d, l2, seed=n * 100 + d)
    # ours in float32, the training dtype; the reference in float64
    a1, b1 = a.float().requires_grad_(), b.float().requires_grad_()
    a2, b2 = a.clone().requires_grad_(), b.clone().requires_grad_()
    ours = _ours(name, a1, b1, p, semi_hard=semi_hard, l2_normalize=l2)
    ref, fallbacks = _ref(name, a2, b2, p, semi_hard=semi_hard, l2=l2)
    if semi_hard:  # both branches of the rule are exercised
        assert 0 < fallbacks < 2 * n
    ours.backward()
    ref.backward()
    assert ours.dtype == torch.float32
    assert abs(ours.item() - ref.item()) < 1e-6 * max(1.0, abs(ref.item())), (ours.item(), ref.item())
    torch.testing.assert_close(a1.grad.double(), a2.grad, atol=1e-6, rtol=0)
    torch.testing.assert_close(b1.grad.double(), b2.grad, atol=1e-6, rtol=0)
    assert a2.grad.abs().max() > 1e-3 or (name == "margin_triplet" and ref.item() == 0)  # not vacuous
    # and in float64 it agrees to rounding
    ours64 = _ours(name, a, b, p, semi_hard=semi_hard, l2_normalize=l2)
    assert ours64.dtype == torch.float64
    assert abs(ours64.item() - ref.item()) < 1e-12 * max(1.0, abs(ref.item()))


@pytest.mark.parametrize("name", ["nt_logistic", "margin_triplet"])
@pytest.mark.parametrize("semi_hard", [False, True], ids=["all", "sh"])
@pytest.mark.parametrize("l2", [True, False], ids=["l2", "nol2"])
def test_gathered_negatives_equal_full_batch(name, semi_hard, l2):
    """Each of three 'devices' scores its 4 images' anchors against the global batch of 12: its loss is the
    reference over exactly those anchors, and the mean over devices is the full batch's loss, gradients
    included."""
    p = 0.3 if name == "nt_logistic" else 0.5
    a, b = _batch(12, 6, l2, seed=7)
    z1, z2 = a.clone().requires_grad_(), b.clone().requires_grad_()
    full = _ours(name, z1, z2, p, semi_hard=semi_hard, l2_normalize=l2)
    gf1, gf2 = torch.autograd.grad(full, (z1, z2))
    parts = []
    for r in range(3):
        rows = slice(4 * r, 4 * (r + 1))
        part = _ours(name, z1[rows], z2[rows], p, z1_all=z1, z2_all=z2, offset=4 * r, semi_hard=semi_hard,
                     l2_normalize=l2)
        ref, _ = _ref(name, z1, z2, p, images=range(4 * r, 4 * (r + 1)), semi_hard=semi_hard, l2=l2)
        assert abs(part.item() - ref.item()) < 1e-12 * max(1.0, abs(ref.item())), r
        g_part, g_ref = torch.autograd.grad(part, (z1, z2), retain_graph=True), torch.autograd.grad(ref, (z1, z2))
        torch.testing.assert_close(g_part, g_ref, atol=1e-10, rtol=0)
        parts.append(part)
    split = sum(parts) / 3
    gs1, gs2 = torch.autograd.grad(split, (z1, z2))
    assert abs(full.item() - split.item()) < 1e-12
    torch.testing.assert_close(gf1, gs1, atol=1e-12, rtol=0)
    torch.testing.assert_close(gf2, gs2, atol=1e-12, rtol=0)


def test_closed_forms():
    """Every view of every image identical (all similarities 1): NT-Logistic is -log sigma(1/tau) -
    log sigma(-1/tau), margin triplet is m, with and without mining (every negative is then a fallback)."""
    z = torch.ones(6, 3)
    for sh in (False, True):
        tau = 0.5
        expected = -math.log(1 / (1 + math.exp(-1 / tau))) - math.log(1 / (1 + math.exp(1 / tau)))
        assert nt_logistic(z, z.clone(), tau, semi_hard=sh).item() == pytest.approx(expected, rel=1e-6)
        assert margin_triplet(z, z.clone(), 0.7, semi_hard=sh).item() == pytest.approx(0.7, rel=1e-6)


def test_perfect_alignment():
    """Orthogonal images, identical views: the margin loss is max(0, 0 - 1 + m) = 0 for m < 1 and the
    accuracy 1; NT-Logistic is -log sigma(1/tau) (the positive) + log 2 (each negative at cosine 0)."""
    z = torch.eye(4) * 10
    loss, acc = margin_triplet_with_accuracy(z, z.clone(), 0.5)
    assert loss.item() == 0 and acc.item() == 1.0
    assert margin_triplet(z, z.clone(), 1.5).item() == pytest.approx(0.5)
    loss, acc = nt_logistic_with_accuracy(z, z.clone(), 0.05)
    assert loss.item() == pytest.approx(math.log1p(math.exp(-1 / 0.05)) + math.log(2), rel=1e-6) and acc.item() == 1.0


def test_semi_hard_rule_on_a_hand_built_anchor():
    """Anchor 0 (view 1 of image 0) on the unit circle with positive at cosine 0.5 and negatives at cosines
    0.9 (harder than the positive), 0.5 (tied), 0.4 (semi-hard: the most similar below the positive) and -0.8: the
    semi-hard negative of that anchor is 0.4: not 0.9 (the hardest), -0.8 (the easiest) nor 0.5 (tied)."""
    def at(c):
        return torch.tensor([c, math.sqrt(1 - c * c)], dtype=torch.float64)

    anchor, pos = at(1.0), at(0.5)
    # image 1's two views at cosines 0.9 and 0.4 from the anchor; image 2's at -0.8 and 0.5, a tie with the
    # positive, which is not "less similar than the positive"
    z1 = torch.stack([anchor, at(0.9), at(-0.8)])
    z2 = torch.stack([pos, at(0.4), at(0.5)])

    s, labels = contrastive_logits(z1, z2, 1.0)
    chosen = semi_hard_negative(s, s.gather(1, labels[:, None]).squeeze(1), negative_mask(labels, 6))
    assert chosen[0].item() == pytest.approx(0.4)
    # fallback: the same anchor with its positive turned to cosine -1, below every negative
    z2_bad = z2.clone()
    z2_bad[0] = -anchor
    s, labels = contrastive_logits(z1, z2_bad, 1.0)
    chosen = semi_hard_negative(s, s.gather(1, labels[:, None]).squeeze(1), negative_mask(labels, 6))
    assert chosen[0].item() == pytest.approx(-0.8)  # every negative beats the positive (-1): the easiest one


@pytest.mark.parametrize("fn,p", [(nt_xent, 0.5), (nt_logistic, 0.5), (margin_triplet, 0.5)])
def test_similarities_stay_float32_under_autocast(fn, p):
    """Under bf16 autocast the loss is float32 and equals the float32 loss: the similarities are not
    computed by a bf16 matmul (which is off by ~1e-2 here)."""
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(16, 64, generator=g), torch.randn(16, 64, generator=g)
    ref = fn(z1, z2, p)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        amp = fn(z1, z2, p)
    assert amp.dtype == torch.float32
    assert abs(amp.item() - ref.item()) < 1e-6


@pytest.mark.parametrize("name", ["nt_logistic", "margin_triplet"])
@pytest.mark.parametrize("semi_hard", [False, True], ids=["all", "sh"])
def test_no_host_synchronisation_and_one_graph(name, semi_hard):
    """No value read back to the host (aten::nonzero, masked_select, _local_scalar_dense), and the loss
    traces as one graph."""
    from torch.profiler import ProfilerActivity, profile

    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(6, 8, generator=g, requires_grad=True), torch.randn(6, 8, generator=g, requires_grad=True)
    z1_all = torch.cat((torch.randn(6, 8, generator=g), z1))
    z2_all = torch.cat((torch.randn(6, 8, generator=g), z2))
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        _ours(name, z1, z2, 0.5, z1_all=z1_all, z2_all=z2_all, offset=6, semi_hard=semi_hard).backward()
    names = [e.name for e in prof.events()]
    for op in ("aten::nonzero", "aten::masked_select", "aten::_local_scalar_dense", "aten::item"):
        assert names.count(op) == 0, op

    def f(a, b, a_all, b_all):
        return _ours(name, a, b, 0.5, z1_all=a_all, z2_all=b_all, offset=6, semi_hard=semi_hard)

    ex = torch._dynamo.explain(f)(z1, z2, z1_all, z2_all)
    assert ex.graph_break_count == 0 and ex.graph_count == 1, [str(r.reason) for r in ex.break_reasons]


def test_bad_inputs():
    z = torch.randn(3, 4)
    with pytest.raises(ValueError, match="temperature"):
        nt_logistic(z, z, 0.0)
    with pytest.raises(ValueError, match="margin"):
        margin_triplet(z, z, -0.1)
    with pytest.raises(ValueError, match="at least 2 images"):
        margin_triplet(z[:1], z[:1], 0.5)
    with pytest.raises(ValueError, match="z1 and z2"):
        nt_logistic(z, z[:2], 0.5)
