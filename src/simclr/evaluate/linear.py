"""Linear evaluation of a frozen encoder: the paper's two protocols.

- ``sgd`` (the paper's ImageNet protocol): a linear classifier on h, trained with SGD + Nesterov
  momentum 0.9, lr 0.1 x B/256, no weight decay, cosine schedule, on random crop + flip views whose
  features are computed on the fly by the frozen encoder (BN in inference mode).
- ``lbfgs`` (the paper's transfer protocol): features computed once from centre views, then
  L2-regularised multinomial logistic regression solved with L-BFGS; the regularisation strength
  is chosen on a validation split carved from the training data, then the model is refit on all of it.
  The solver (``simclr.evaluate.logreg``) is full-batch, preconditioned L-BFGS in torch on the training device, in
  float64, on scikit-learn's objective and stopping rule, warm-started along the regularisation path.
"""

from __future__ import annotations

import contextlib
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from simclr.config import ConfigError
from simclr.data import DataError
from simclr.data.augment import SimCLRAugment
from simclr.evaluate.features import extract_features, out_of_memory_as_error
from simclr.evaluate.inputs import prepare, write_result
from simclr.evaluate.knn import topk_accuracy
from simclr.evaluate.logreg import fit_logistic
from simclr.optim import scaled_lr, set_lr, warmup_cosine
from simclr.runtime import seeded

__all__ = ["crop_flip", "lbfgs_on_features", "lbfgs_probe", "linear_eval_lbfgs", "linear_eval_sgd", "linear_evaluate", "linear_result",
           "steps_per_epoch", "stratified_split", "train_classifier"]


def crop_flip(image_size: int) -> SimCLRAugment:
    """Random resized crop + horizontal flip only (the evaluation protocols' training views)."""
    return SimCLRAugment(image_size, color=False, grayscale=False, blur=False)


def steps_per_epoch(n: int, batch_size: int) -> int:
    """Optimisation steps of one epoch of ``train_classifier`` over ``n`` images: full batches only, at least one."""
    return max(1, n // batch_size)


def train_classifier(logits_fn, params: list, data, image_size: int, device: torch.device, epochs: int, batch_size: int,
                     lr: float, seed: int, log=print, name: str = "train", objective=None) -> None:
    """The evaluation protocols' optimisation: SGD + Nesterov momentum 0.9, no weight decay, a cosine
    schedule per step from ``lr`` to 0, cross-entropy on random crop + flip views of ``data``.

    ``logits_fn(x)`` maps views (B, 3, S, S) (channels_last) to logits; ``params`` are what it trains.
    ``objective(logits, x, idx)``, when given, replaces the cross-entropy with the labels (distillation:
    the teacher's predictions on the same views x of images idx).
    Deterministic for ``seed`` on CPU (data order and crops). A NaN/inf loss stops with FloatingPointError.
    """
    opt = torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True, weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed)
    aug = crop_flip(image_size)
    n = len(data)
    per_epoch = steps_per_epoch(n, batch_size)
    total, step = epochs * per_epoch, 0
    for epoch in range(epochs):
        order = torch.randperm(n, generator=gen)
        run = 0.0
        for s in range(per_epoch):
            idx = order[s * batch_size : (s + 1) * batch_size]
            set_lr(opt, warmup_cosine(step, total, 0, lr))
            with out_of_memory_as_error(f"training on batches of {len(idx)} images of {image_size}px on {device}"):
                x = aug(data.get(idx).to(device), gen if device.type == "cpu" else None)
                x = x.contiguous(memory_format=torch.channels_last)
                if objective is None:
                    loss = F.cross_entropy(logits_fn(x), data.labels[idx].to(device))
                else:
                    loss = objective(logits_fn(x), x, idx)
                opt.zero_grad(set_to_none=True)
                loss.backward()
            opt.step()
            value = loss.item()
            if not math.isfinite(value):
                raise FloatingPointError(f"{name}: the loss became {value} at epoch {epoch + 1}, step {s + 1}; "
                                         f"lower the learning rate (--lr)")
            run += value
            step += 1
        log(f"{name} epoch {epoch + 1}/{epochs}: loss {run / per_epoch:.4f}")


def stratified_split(labels: torch.Tensor, val_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (train, val) with ``val_fraction`` of every class in val: at least one image of each
    class with two or more, and never all of them (a class of one image stays in train only)."""
    g = torch.Generator().manual_seed(seed)
    tr, va = [], []
    for c in torch.unique(labels).tolist():
        idx = torch.nonzero(labels == c).squeeze(1)
        idx = idx[torch.randperm(len(idx), generator=g)]
        n_val = min(len(idx) - 1, max(1, round(val_fraction * len(idx))))
        va.append(idx[:n_val])
        tr.append(idx[n_val:])
    return torch.cat(tr).sort().values, torch.cat(va).sort().values


def _solver_device(device: torch.device) -> torch.device:
    """Where the L-BFGS probe runs: the training device, in float64 (the CPU for MPS, which has no float64)."""
    device = torch.device(device)
    return torch.device("cpu") if device.type == "mps" else device


def lbfgs_probe(
    ftr: torch.Tensor,
    ytr: torch.Tensor,
    fte: torch.Tensor,
    num_classes: int,
    lambdas,
    split: tuple[torch.Tensor, torch.Tensor] | None,
    max_iter: int = 1000,
    device: torch.device | str = "cpu",
    log=print,
) -> dict:
    """The L-BFGS probe on features: standardise with the training features' mean and std, fit
    L2-regularised logistic regression (``simclr.evaluate.logreg``, scikit-learn's objective with
    C = 1 / lambda) on ``split``'s train part for every lambda of ``lambdas``, score each on its val part,
    refit on all of ``ftr`` with the lambda of the best val top-1 (the first of equals), and give
    ``scores``: the (len(fte), num_classes) class probabilities of ``fte`` (0 for classes absent from ``ytr``).

    ``split`` None (a grid of one): no search. The path is warm-started from the strongest lambda to the
    weakest (each fit starts from the previous solution); the refit starts from zeros.
    """
    dev = _solver_device(device)
    for name, f in (("training", ftr), ("test", fte)):
        bad = int((~torch.isfinite(f)).any(1).sum()) if f.numel() else 0
        if bad:
            raise FloatingPointError(f"the encoder gave non-finite features (NaN or inf) for {bad} of the {len(f)} "
                                     f"{name} images; the L-BFGS probe needs finite features (has the encoder diverged?)")
    classes = torch.unique(ytr)
    if len(classes) < 2:
        raise DataError(f"the L-BFGS probe needs training images of at least 2 classes, got {len(classes)}")
    ftr, fte = ftr.to(dev, torch.float64), fte.to(dev, torch.float64)
    # Standardising features keeps L-BFGS well conditioned; it does not change the model class.
    mu, sd = ftr.mean(0), ftr.std(0, unbiased=False) + 1e-8
    ftr, fte = (ftr - mu) / sd, (fte - mu) / sd
    y = torch.searchsorted(classes, ytr).to(dev)  # labels as indices into the classes present
    k = len(classes)
    scores: list[float] = [0.0] * len(lambdas) if split is not None else []
    with _solver_memory(len(ftr), ftr.shape[1], k, dev), _one_thread_if_small(dev, len(ftr) * (ftr.shape[1] + 1) * k):
        if split is not None:
            tr, va = (i.to(dev) for i in split)
            xtr, ytr_, xva, yva = ftr[tr], y[tr], ftr[va], y[va]
            init = None
            for i in reversed(range(len(lambdas))):  # strongest first: each fit starts from the previous one
                fit = fit_logistic(xtr, ytr_, k, 1.0 / float(lambdas[i]), init=init, max_iter=max_iter)
                init = fit.weights
                scores[i] = float((fit.predict(xva) == yva).double().mean())
                log(f"lambda {lambdas[i]:.2e}: val top-1 {scores[i]:.4f} ({fit.n_iter} L-BFGS iterations)")
        best = int(np.argmax(scores)) if scores else 0
        # the refit starts from zeros, as every fit did before the path was warm-started: on separable data the
        # objective has no well-defined minimiser at weak regularisation, and the start would pick the model
        fit = fit_logistic(ftr, y, k, 1.0 / float(lambdas[best]), max_iter=max_iter)
        proba = fit.predict_proba(fte).cpu()
    scores_full = torch.zeros(len(fte), num_classes, dtype=proba.dtype)
    scores_full[:, classes] = proba
    return {"scores": scores_full, "l2_lambda": float(lambdas[best]), "val_top1": scores[best] if scores else None,
            "val_scores": scores, "n_iter": fit.n_iter}


SMALL_PRODUCT = 1 << 27  # multiply-adds of the solver's matrix product below which the CPU runs it on one thread


@contextlib.contextmanager
def _one_thread_if_small(device: torch.device, work: int):
    """On the CPU, run a small problem on one thread (and give the thread count back after). Its matrix
    products take about a millisecond: threads save little there, but on a machine whose cores are busy
    with other work every product waits for its slowest thread (the subset's probe measured 2.4 s on one
    thread, 4 to 69 s on two). One thread also makes the numbers independent of the machine's core count."""
    threads = torch.get_num_threads()
    if device.type != "cpu" or work >= SMALL_PRODUCT or threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@contextlib.contextmanager
def _solver_memory(n: int, dim: int, k: int, device: torch.device):
    """Running out of memory in the solver: a one-line ConfigError."""
    try:
        yield
    except torch.OutOfMemoryError:
        raise ConfigError(f"out of memory fitting the L-BFGS probe on {n} features of {dim} values and {k} classes "
                          f"on {device}; use --device cpu or --solver sgd") from None


def linear_eval_lbfgs(
    encoder: nn.Module,
    train,
    test,
    image_size: int,
    device: torch.device,
    num_grid: int = 12,
    grid_range: tuple[float, float] = (-6.0, 5.0),
    val_fraction: float = 0.2,
    max_iter: int = 1000,
    batch_size: int = 512,
    seed: int = 0,
    log=print,
    crop_fraction: float | None = None,
) -> dict:
    """L-BFGS logistic regression on frozen centre-view features; returns top-1/top-5 and the chosen
    regularisation. ``grid_range`` is log10 of the L2 strength lambda (C = 1 / lambda); the paper
    searched 45 values in [1e-6, 1e5]. ``crop_fraction``: the centre view's (None: auto).
    The solver (``lbfgs_probe``) runs on ``device``."""
    _lbfgs_split(train, num_grid, val_fraction, seed)  # a split that cannot be made fails before the extraction
    ftr = extract_features(encoder, train, image_size, device, batch_size, crop_fraction=crop_fraction)
    fte = extract_features(encoder, test, image_size, device, batch_size, crop_fraction=crop_fraction)
    return lbfgs_on_features(ftr, train, fte, test, device, num_grid, grid_range, val_fraction, max_iter, seed, log)


def _lbfgs_split(train, num_grid: int, val_fraction: float, seed: int):
    if num_grid <= 1:  # a grid of one needs no validation split
        return None
    split = stratified_split(train.labels, val_fraction, seed)
    if len(split[1]) == 0:
        raise DataError(f"the L-BFGS probe picks its L2 strength on a validation split, but no class of the "
                        f"training data ({len(train)} images) has two images or more to split; give more images "
                        f"per class, --linear.grid 1 (no search), or --solver sgd")
    return split


def lbfgs_on_features(ftr: torch.Tensor, train, fte: torch.Tensor, test, device: torch.device, num_grid: int = 12,
                      grid_range: tuple[float, float] = (-6.0, 5.0), val_fraction: float = 0.2, max_iter: int = 1000,
                      seed: int = 0, log=print) -> dict:
    """``linear_eval_lbfgs`` on features already extracted: ftr (N_train, D) of ``train``'s images, fte (N_test, D) of
    ``test``'s (the sets give the labels and classes)."""
    lambdas = np.logspace(grid_range[0], grid_range[1], num_grid)
    split = _lbfgs_split(train, num_grid, val_fraction, seed)
    probe = lbfgs_probe(ftr, train.labels, fte, len(train.classes), lambdas, split, max_iter, device, log)
    res = topk_accuracy(probe["scores"], test.labels)
    res.update(solver="lbfgs", l2_lambda=probe["l2_lambda"], val_top1=probe["val_top1"],
               grid=[float(v) for v in lambdas], val_scores=probe["val_scores"])
    return res


def linear_eval_sgd(
    encoder: nn.Module,
    train,
    test,
    image_size: int,
    device: torch.device,
    epochs: int = 90,
    batch_size: int = 256,
    base_lr: float = 0.1,
    seed: int = 0,
    log=print,
    crop_fraction: float | None = None,
) -> dict:
    """SGD linear probe on random crop + flip views of the frozen encoder; returns top-1/top-5 on the
    centre views (``crop_fraction``, None: auto) of ``test``.

    A batch larger than the training set is cut to its size (the learning rate follows the batch used)."""
    batch_size = max(1, min(batch_size, len(train)))
    encoder.eval()
    for p in encoder.parameters():
        p.requires_grad_(False)
    with seeded(seed):  # the classifier's initialisation, without touching the caller's RNG
        clf = nn.Linear(encoder.num_features, len(train.classes)).to(device)
    lr = scaled_lr(base_lr, batch_size, "linear")

    def classify(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():  # the encoder stays frozen
            h = encoder(x)
        return clf(h)

    train_classifier(classify, list(clf.parameters()), train, image_size, device, epochs, batch_size, lr, seed, log, "linear")
    with torch.no_grad():
        fte = extract_features(encoder, test, image_size, device, batch_size, crop_fraction=crop_fraction)
        logits = clf(fte.to(device)).cpu()
    res = topk_accuracy(logits, test.labels)
    res.update(solver="sgd", epochs=epochs, batch_size=batch_size, lr=lr)
    return res


def linear_evaluate(cfg, log=print) -> dict:
    """``simclr linear`` from a ``simclr.config.LinearConfig``; writes linear.json (linear_z.json with
    linear.projection) into eval.out or the run folder."""
    if cfg.linear.projection and not cfg.encoder.checkpoint:  # before any data is read
        raise ConfigError("--projection classifies z = g(h) with a pretrained run's head: give --checkpoint, not --random-init")
    inp = prepare(cfg, labelled=True, with_test=True, out=lambda run: cfg.eval.out or run, log=log)
    lin, ev = cfg.linear, cfg.eval
    net = inp.network(lin.projection)
    if lin.solver == "lbfgs":
        res = linear_eval_lbfgs(net, inp.data, inp.test, inp.image_size, inp.device, num_grid=lin.grid,
                                val_fraction=lin.val_fraction, batch_size=ev.batch_size, seed=ev.seed, log=log,
                                crop_fraction=inp.crop_fraction)
    else:
        res = linear_eval_sgd(net, inp.data, inp.test, inp.image_size, inp.device, epochs=lin.epochs,
                              batch_size=ev.batch_size, base_lr=lin.lr, seed=ev.seed, log=log, crop_fraction=inp.crop_fraction)
    return linear_result(inp, res, lin.projection)


def linear_result(inp, res: dict, projection: bool = False) -> dict:
    """A probe's result ``res`` completed with what was probed (``inp``: ``simclr.evaluate.inputs.EvalInputs``) and
    written to linear.json, or linear_z.json for the projection z (h's linear.json is kept)."""
    res.update(encoder=inp.name, image_size=inp.image_size, num_train=len(inp.data), num_test=len(inp.test),
               features="z" if projection else "h")
    write_result(inp.out, "linear_z" if projection else "linear", res)
    return res
