"""The L-BFGS probe's solver (simclr.evaluate.logreg) and protocol (lbfgs_probe): the same minimiser as a
float64 reference, warm starts equal to cold starts, the protocol of the scikit-learn probe it replaced,
the same numbers on every run, and one-line errors for bad inputs."""

import importlib.util
import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.optimize import minimize
from sklearn.linear_model import LogisticRegression

from simclr.checkpoint import load_checkpoint, save_checkpoint
from simclr.cli import main
from simclr.data import DataError, ImageSet
from simclr.evaluate import linear
from simclr.evaluate.linear import lbfgs_probe, linear_eval_lbfgs, stratified_split
from simclr.evaluate.logreg import fit_logistic, objective

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "linear_probe.py"


def _bench():
    spec = importlib.util.spec_from_file_location("linear_probe_bench", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _problem(n=120, d=6, k=3, noise=1.5, seed=0, scales=None):
    """Gaussian classes around random centres; ``noise`` sets their overlap, ``scales`` the feature scales."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(k, d, generator=g, dtype=torch.float64) * 2
    y = torch.arange(k).repeat(n // k + 1)[:n]
    x = centres[y] + noise * torch.randn(n, d, generator=g, dtype=torch.float64)
    if scales is not None:
        x = x * torch.as_tensor(scales, dtype=torch.float64)
    return x, y


def _reference_weights(x: np.ndarray, y: np.ndarray, k: int, c: float) -> np.ndarray:
    """The same objective written out in numpy and minimised by scipy's L-BFGS-B to machine precision."""
    n, d = x.shape
    rows = 1 if k == 2 else k
    xa = np.hstack([x, np.ones((n, 1))])
    onehot = np.eye(k)[y]
    l2 = 1.0 / (c * n)

    def fg(v):
        w = v.reshape(rows, d + 1)
        z = xa @ w.T
        if rows == 1:
            z = np.hstack([np.zeros_like(z), z])
        m = z.max(1, keepdims=True)
        lse = (m + np.log(np.exp(z - m).sum(1, keepdims=True)))[:, 0]
        wp = w.copy()
        wp[:, -1] = 0
        f = np.mean(lse - (z * onehot).sum(1)) + 0.5 * l2 * (wp**2).sum()
        r = np.exp(z - lse[:, None]) - onehot
        if rows == 1:
            r = r[:, 1:]
        return f, ((r.T @ xa) / n + l2 * wp).ravel()

    res = minimize(fg, np.zeros(rows * (d + 1)), jac=True, method="L-BFGS-B",
                   options={"maxiter": 100000, "gtol": 1e-13, "ftol": 0.0, "maxcor": 30})
    return res.x.reshape(rows, d + 1)


# ------------------------------------------------------------------------------------- the solver


@pytest.mark.parametrize("k", [2, 4])
@pytest.mark.parametrize("c", [0.05, 3.0])
def test_fit_matches_a_float64_reference_minimisation(k, c):
    x, y = _problem(n=90, d=5, k=k, noise=2.0, seed=k)
    fit = fit_logistic(x, y, k, c, tol=1e-10, ftol=0.0)
    ref = _reference_weights(x.numpy(), y.numpy(), k, c)
    assert fit.converged and fit.weights.shape == ref.shape
    np.testing.assert_allclose(fit.weights.numpy(), ref, atol=1e-7)
    assert objective(x, y, k, c, fit.weights) <= objective(x, y, k, c, torch.from_numpy(ref)) + 1e-12


@pytest.mark.parametrize("k", [2, 3])
def test_fit_matches_scikit_learn(k):
    """The objective is LogisticRegression's: the same coefficients for the same C (binary: one row)."""
    x, y = _problem(n=150, d=4, k=k, noise=2.0, seed=10 + k)
    c = 0.7
    fit = fit_logistic(x, y, k, c, tol=1e-10, ftol=0.0)
    clf = LogisticRegression(C=c, solver="lbfgs", tol=1e-10, max_iter=10000).fit(x.numpy(), y.numpy())
    np.testing.assert_allclose(fit.coef.numpy(), clf.coef_, atol=1e-6)
    # intercepts of the multinomial model are defined up to a shift common to all classes
    b, b_ref = fit.intercept.numpy(), clf.intercept_
    if k > 2:
        b, b_ref = b - b.mean(), b_ref - b_ref.mean()
    np.testing.assert_allclose(b, b_ref, atol=1e-6)
    np.testing.assert_allclose(fit.predict_proba(x).numpy(), clf.predict_proba(x.numpy()), atol=1e-7)


def test_warm_starts_give_the_cold_solutions_in_fewer_iterations():
    x, y = _problem(n=200, d=8, k=4, noise=2.0, seed=3)
    x = (x - x.mean(0)) / x.std(0)  # standardised, as the probe does
    prev, warm_iters, cold_iters = None, 0, 0
    for c in np.logspace(-3, 2, 11):  # strongest regularisation first
        warm = fit_logistic(x, y, 4, c, init=prev, tol=1e-12, ftol=0.0)
        cold = fit_logistic(x, y, 4, c, tol=1e-12, ftol=0.0)
        np.testing.assert_allclose(warm.weights.numpy(), cold.weights.numpy(), atol=1e-6)
        # at the probe's tolerance, the start saves iterations (it was used)
        warm_iters += fit_logistic(x, y, 4, c, init=prev).n_iter
        cold_iters += fit_logistic(x, y, 4, c).n_iter
        prev = warm.weights
    assert warm_iters < 0.9 * cold_iters
    # from far away too, and a start at the solution is kept
    far = fit_logistic(x, y, 4, c, init=torch.full_like(prev, 3.0), tol=1e-12, ftol=0.0)
    shift = (far.intercept - prev[:, -1]).mean()  # the intercepts are defined up to a common shift (here 3)
    np.testing.assert_allclose(far.weights.numpy(), (prev + shift * torch.eye(prev.shape[1])[-1]).numpy(), atol=1e-5)
    again = fit_logistic(x, y, 4, c, init=prev)
    assert again.n_iter == 0 and torch.allclose(again.weights, prev, rtol=0, atol=1e-12)


def test_stops_at_the_tolerance_and_at_max_iter():
    x, y = _problem(n=200, d=8, k=4, noise=2.0, seed=4)
    loose, tight = fit_logistic(x, y, 4, 1.0, tol=1e-3), fit_logistic(x, y, 4, 1.0, tol=1e-9)
    assert loose.converged and loose.n_iter < tight.n_iter
    capped = fit_logistic(x, y, 4, 1.0, tol=1e-12, max_iter=3)
    assert capped.n_iter == 3 and not capped.converged


# ----------------------------------------------------------------------------------- the protocol


def _compare_with_reference(x, y, xt, k, lambdas, max_iter=1000):
    split = stratified_split(y, 0.25, seed=0)
    new = lbfgs_probe(x.float(), y, xt.float(), k, lambdas, split, max_iter, log=lambda *_: None)
    old = _bench().reference_probe(x.float(), y, xt.float(), k, lambdas, split, max_iter, log=lambda *_: None)
    return new, old


def test_protocol_on_separable_data_is_the_scikit_learn_one():
    """Every lambda separates the val images, so the first (weakest) of the equals is chosen."""
    x, y = _problem(n=90, d=5, k=3, noise=0.05, seed=1)
    xt, yt = _problem(n=60, d=5, k=3, noise=0.05, seed=1)
    lambdas = np.logspace(-6, 5, 6)[:4]
    new, old = _compare_with_reference(x, y, xt, 3, lambdas)
    assert new["val_scores"] == old["val_scores"] == [1.0] * 4
    assert new["l2_lambda"] == old["l2_lambda"] == lambdas[0]
    assert torch.equal(new["scores"].argmax(1), yt) and torch.equal(old["scores"].argmax(1), yt)


def test_protocol_on_noisy_data_is_the_scikit_learn_one():
    """Overlapping classes, features of unequal scales (standardisation matters), two absent from the test set."""
    scales = [1.0, 100.0, 0.01, 5.0, 1.0, 0.2, 30.0, 1.0]
    x, y = _problem(n=240, d=8, k=5, noise=2.5, seed=2, scales=scales)
    xt, _ = _problem(n=100, d=8, k=5, noise=2.5, seed=7, scales=scales)
    lambdas = np.logspace(-6, 5, 12)
    new, old = _compare_with_reference(x, y, xt, 5, lambdas)
    assert new["val_scores"] == old["val_scores"]
    assert len(set(new["val_scores"])) > 3  # the grid matters here
    best = int(np.argmax(old["val_scores"]))
    assert 0 < best < len(lambdas) - 1 and new["l2_lambda"] == old["l2_lambda"] == lambdas[best]
    assert new["val_top1"] == old["val_top1"]
    # the refit on all training images: the same test probabilities
    torch.testing.assert_close(new["scores"], old["scores"], atol=2e-5, rtol=0)


def test_probe_warm_starts_from_the_strongest_lambda_and_refits_from_zeros(monkeypatch):
    calls = []
    real = linear.fit_logistic

    def spy(x, y, k, c, *, init=None, max_iter=1000, tol=1e-6):
        fit = real(x, y, k, c, init=init, max_iter=max_iter, tol=tol)
        calls.append((c, len(x), init, fit.weights))
        return fit

    monkeypatch.setattr(linear, "fit_logistic", spy)
    x, y = _problem(n=120, d=5, k=3, noise=2.0, seed=5)
    lambdas = np.logspace(-2, 3, 4)
    split = stratified_split(y, 0.2, seed=0)
    res = lbfgs_probe(x.float(), y, x.float(), 3, lambdas, split, log=lambda *_: None)
    path, refit = calls[:-1], calls[-1]
    assert [c for c, *_ in path] == [1.0 / v for v in lambdas[::-1]] and all(n == len(split[0]) for _, n, *_ in path)
    assert path[0][2] is None and all(cur[2] is prev[3] for prev, cur in itertools.pairwise(path))
    best = int(np.argmax(res["val_scores"]))
    assert refit[0] == 1.0 / lambdas[best] and refit[1] == len(x) and refit[2] is None  # the refit: from zeros


def test_probe_gives_the_same_numbers_every_run():
    x, y = _problem(n=240, d=8, k=5, noise=2.5, seed=2)
    lambdas = np.logspace(-6, 5, 12)
    split = stratified_split(y, 0.2, seed=0)
    runs = [lbfgs_probe(x.float(), y, x[:50].float(), 5, lambdas, split, log=lambda *_: None) for _ in range(2)]
    assert torch.equal(runs[0]["scores"], runs[1]["scores"]) and runs[0]["val_scores"] == runs[1]["val_scores"]


def test_grid_of_one_fits_once_on_everything():
    x, y = _problem(n=60, d=4, k=3, noise=2.0, seed=6)
    res = lbfgs_probe(x.float(), y, x.float(), 3, np.array([1.0]), None, log=lambda *_: None)
    ref = fit_logistic((x - x.mean(0)) / (x.std(0, unbiased=False) + 1e-8), y, 3, 1.0)
    assert res["val_scores"] == [] and res["val_top1"] is None
    torch.testing.assert_close(res["scores"], ref.predict_proba((x - x.mean(0)) / (x.std(0, unbiased=False) + 1e-8)),
                               atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------------- bad inputs


class _Const(torch.nn.Module):
    """An 'encoder' whose features are ``value`` (NaN) for the images of ``bad`` (by their first pixel)."""

    def __init__(self, value=float("nan")):
        super().__init__()
        self.value = value

    def forward(self, x):
        h = x.flatten(1)[:, :4].float()
        return torch.where(x.flatten(1)[:, :1] > 0.5, torch.full_like(h, self.value), h)


def _images(n_per_class=6, classes=2, bright_first=False):
    labels = torch.arange(classes).repeat_interleave(n_per_class)
    imgs = torch.randint(0, 100, (len(labels), 3, 8, 8), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    if bright_first:
        imgs[0] = 255
    return ImageSet(labels=labels, classes=[str(c) for c in range(classes)], images=imgs)


@pytest.mark.parametrize("where", ["training", "test"])
def test_non_finite_features_are_a_one_line_error(where):
    train, test = _images(bright_first=where == "training"), _images(bright_first=where == "test")
    with pytest.raises(FloatingPointError, match=f"non-finite features .* for 1 of the 12 {where} images") as e:
        linear_eval_lbfgs(_Const(), train, test, 8, torch.device("cpu"), num_grid=3, log=lambda *_: None)
    assert "\n" not in str(e.value)


def test_a_single_class_is_a_one_line_error():
    one = _images(classes=1)
    with pytest.raises(DataError, match="at least 2 classes") as e:
        linear_eval_lbfgs(_Const(), one, one, 8, torch.device("cpu"), num_grid=3, log=lambda *_: None)
    assert "\n" not in str(e.value)


@pytest.mark.slow
def test_cli_encoder_with_non_finite_features(tiny_run, tmp_path, capsys):
    """Finite weights that give NaN features (negative BatchNorm variances): exit 2, one line, no output."""
    state = load_checkpoint(tiny_run)
    state["model"] = {k: (-torch.ones_like(v) if k.startswith("encoder.") and k.endswith("running_var") else v)
                      for k, v in state["model"].items()}
    save_checkpoint(state, tmp_path / "run" / "checkpoint.pt")
    out = tmp_path / "o"
    rc = main(["linear", "--checkpoint", str(tmp_path / "run"), "--train-data", "synthetic", "--test-data", "synthetic:test",
               "--data.synthetic_train", "60", "--data.synthetic_test", "20", "--device", "cpu", "--solver", "lbfgs",
               "--grid", "3", "--out", str(out)])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert rc == 2 and len(err) == 1 and "non-finite features" in err[0] and "Traceback" not in err[0]
    assert not out.exists()


# ------------------------------------------------------------------------------------ the benchmark


def test_benchmark_runs_both_solvers(tmp_path, capsys):
    x, y = _problem(n=150, d=6, k=3, noise=2.0, seed=8)
    xt, yt = _problem(n=60, d=6, k=3, noise=2.0, seed=9)
    feats = tmp_path / "f.pt"
    torch.save({"train": x.float(), "train_labels": y, "test": xt.float(), "test_labels": yt, "classes": ["a", "b", "c"]}, feats)
    res = _bench().main(["--features", str(feats), "--grid", "5"])
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == res
    assert res["new"]["l2_lambda"] == res["old"]["l2_lambda"] and res["top1_diff"] == 0 and res["speedup"] > 0
