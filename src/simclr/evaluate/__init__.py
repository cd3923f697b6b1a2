"""Evaluation and use of a pretrained encoder, one module per command: ``knn``, ``linear`` (SGD and L-BFGS
probes), ``finetune``, ``export`` (embed and export), ``analyze``; shared by all of them: ``inputs`` (the
encoder and data of a command) and ``features`` (the one feature-extraction loop)."""

from simclr.evaluate.analyze import analyze_run
from simclr.evaluate.export import embed, export
from simclr.evaluate.finetune import finetune_evaluate
from simclr.evaluate.knn import knn_evaluate
from simclr.evaluate.linear import linear_evaluate

__all__ = ["analyze_run", "embed", "export", "finetune_evaluate", "knn_evaluate", "linear_evaluate"]
