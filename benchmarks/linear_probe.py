"""The L-BFGS linear probe after feature extraction: today's torch solver against the scikit-learn one it
replaced, back to back on the same features (issue 12).

    python benchmarks/linear_probe.py --features FEATS.pt                      # features saved earlier
    python benchmarks/linear_probe.py --features FEATS.pt --checkpoint RUN \\
        --train SUB/train --test SUB/test                                      # extract (and save) them first

Features are extracted once, as ``simclr linear --solver lbfgs`` does (``prepare`` + ``extract_features``,
centre views), and saved to FEATS.pt when it does not exist yet. Both solvers then run the same protocol
(stratified validation split, the grid of L2 strengths, refit on all training images) on the same
features: ``reference_probe`` below is a copy of the scikit-learn code of ``linear_eval_lbfgs`` before
the change, ``simclr.evaluate.linear.lbfgs_probe`` the new one. Prints the seconds and top-1 of each,
the speed-up and the load average, then one JSON line. The new solver runs ``--repeat`` times (the
first is reported) and must give the same numbers each time.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from simclr.evaluate.knn import topk_accuracy
from simclr.evaluate.linear import lbfgs_probe, stratified_split


def reference_probe(ftr: torch.Tensor, ytr: torch.Tensor, fte: torch.Tensor, num_classes: int, lambdas,
                    split: tuple[torch.Tensor, torch.Tensor] | None, max_iter: int = 1000, log=print) -> dict:
    """The L-BFGS probe as it was: scikit-learn's LogisticRegression(C=1/lambda, lbfgs, tol=1e-6), every
    fit from zeros, on features standardised in float64 numpy. Same inputs and outputs as ``lbfgs_probe``."""
    from sklearn.linear_model import LogisticRegression

    def fit(x, y, c):
        return LogisticRegression(C=c, solver="lbfgs", max_iter=max_iter, tol=1e-6).fit(x, y)

    x, xt, y = ftr.double().numpy(), fte.double().numpy(), ytr.numpy()
    mu, sd = x.mean(0), x.std(0) + 1e-8
    x, xt = (x - mu) / sd, (xt - mu) / sd
    scores = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning at the weakest regularisation is expected
        if split is not None:
            tr, va = (i.numpy() for i in split)
            for lam in lambdas:
                clf = fit(x[tr], y[tr], 1.0 / lam)
                scores.append(float((clf.predict(x[va]) == y[va]).mean()))
                log(f"lambda {lam:.2e}: val top-1 {scores[-1]:.4f}")
        best = int(np.argmax(scores)) if scores else 0
        clf = fit(x, y, 1.0 / lambdas[best])
    proba = torch.from_numpy(clf.predict_proba(xt))
    full = torch.zeros(len(xt), num_classes, dtype=proba.dtype)
    full[:, torch.from_numpy(clf.classes_)] = proba
    return {"scores": full, "l2_lambda": float(lambdas[best]), "val_top1": scores[best] if scores else None,
            "val_scores": scores, "n_iter": int(clf.n_iter_[0])}


def extract(checkpoint: str, train: str, test: str, device: str, batch_size: int) -> dict:
    """Centre-view features of both sets with the project's own code, as ``simclr linear`` computes them."""
    from simclr.config import LinearConfig
    from simclr.evaluate.features import extract_features
    from simclr.evaluate.inputs import prepare

    cfg = LinearConfig()
    cfg.encoder.checkpoint, cfg.data.path, cfg.data.val_path = checkpoint, train, test
    cfg.linear.solver, cfg.eval.device, cfg.eval.batch_size = "lbfgs", device, batch_size
    inp = prepare(cfg, labelled=True, with_test=True)

    def feats(ds):
        return extract_features(inp.encoder, ds, inp.image_size, inp.device, batch_size, crop_fraction=inp.crop_fraction)

    return {"train": feats(inp.data), "train_labels": inp.data.labels, "test": feats(inp.test),
            "test_labels": inp.test.labels, "classes": list(inp.data.classes)}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--features", required=True, help="features file (.pt): read if it exists, else written")
    ap.add_argument("--checkpoint", help="run folder or checkpoint (to extract the features)")
    ap.add_argument("--train", help="training images (to extract the features)")
    ap.add_argument("--test", help="test images (to extract the features)")
    ap.add_argument("--device", default="cpu", help="feature extraction and the new solver")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--grid", type=int, default=12, help="L2 strengths in [1e-6, 1e5] (simclr linear's --grid)")
    ap.add_argument("--val-fraction", type=float, default=0.2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-iter", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=0, help="limit torch and the BLAS/OpenMP pools of both solvers "
                    "to this many threads (0: as they are; the new solver runs the subset on one thread by itself)")
    ap.add_argument("--skip-old", action="store_true", help="run the new solver only")
    ap.add_argument("--repeat", type=int, default=2, help="runs of the new solver; all must give the same numbers")
    ap.add_argument("--verbose", action="store_true", help="print each lambda's validation top-1")
    a = ap.parse_args(argv)

    path = Path(a.features)
    if path.is_file():
        data = torch.load(path, weights_only=True)
    else:
        if not (a.checkpoint and a.train and a.test):
            ap.error(f"{path} does not exist: give --checkpoint, --train and --test to extract the features")
        t = time.perf_counter()
        data = extract(a.checkpoint, a.train, a.test, a.device, a.batch_size)
        print(f"features extracted in {time.perf_counter() - t:.1f} s, saved to {path}")
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(data, path)
    ftr, ytr, fte, yte = data["train"], data["train_labels"], data["test"], data["test_labels"]
    num_classes = len(data["classes"])
    lambdas = np.logspace(-6.0, 5.0, a.grid)
    split = stratified_split(ytr, a.val_fraction, a.seed) if a.grid > 1 else None
    log = print if a.verbose else (lambda *_: None)
    if a.threads:
        from threadpoolctl import threadpool_limits

        torch.set_num_threads(a.threads)
        threadpool_limits(a.threads)
    load_start = [round(v, 2) for v in os.getloadavg()]
    print(f"{len(ftr)} training / {len(fte)} test features of {ftr.shape[1]} values, {num_classes} classes, "
          f"grid of {a.grid}; torch threads {torch.get_num_threads()}; load average {' '.join(map(str, load_start))}")
    runs = {}
    solvers = {"new": lambda: lbfgs_probe(ftr, ytr, fte, num_classes, lambdas, split, a.max_iter, a.device, log)}
    if not a.skip_old:
        solvers = {"old": lambda: reference_probe(ftr, ytr, fte, num_classes, lambdas, split, a.max_iter, log), **solvers}
    for name, solve in solvers.items():
        times, probes = [], []
        for _ in range(a.repeat if name == "new" else 1):
            t = time.perf_counter()
            probes.append(solve())
            times.append(time.perf_counter() - t)
        probe, seconds = probes[0], times[0]  # the first run, as one `simclr linear` would
        if name == "new":
            same = all(torch.equal(p["scores"], probe["scores"]) and p["val_scores"] == probe["val_scores"] for p in probes)
            runs["new_runs_identical"] = same
            print(f"new: {len(probes)} runs, {'the same' if same else 'DIFFERENT'} numbers; seconds "
                  f"{' '.join(f'{v:.2f}' for v in times)}")
        acc = topk_accuracy(probe["scores"].float(), yte)
        runs[name] = {"seconds": round(seconds, 3), "seconds_all": [round(v, 3) for v in times], "top1": acc["top1"], "top5": acc["top5"],
                      "l2_lambda": probe["l2_lambda"], "val_top1": probe["val_top1"], "refit_iterations": probe["n_iter"]}
        print(f"{name}: {seconds:.2f} s  top-1 {acc['top1']:.4f}  top-5 {acc['top5']:.4f}  lambda {probe['l2_lambda']:.0e}  "
              f"val top-1 {probe['val_top1']}")
    res = {"features": str(path), "num_train": len(ftr), "num_test": len(fte), "dim": int(ftr.shape[1]),
           "num_classes": num_classes, "grid": a.grid, "device": a.device, "torch_threads": torch.get_num_threads(),
           "loadavg_start": load_start, "loadavg": [round(v, 2) for v in os.getloadavg()], **runs}
    if "old" in runs:
        res["speedup"] = round(runs["old"]["seconds"] / runs["new"]["seconds"], 2)
        res["top1_diff"] = round(runs["new"]["top1"] - runs["old"]["top1"], 4)
        print(f"speed-up old/new: {res['speedup']:.1f}x; top-1 new - old: {res['top1_diff']:+.4f}")
    print(f"load average: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    print(json.dumps(res))
    return res


if __name__ == "__main__":
    main()
