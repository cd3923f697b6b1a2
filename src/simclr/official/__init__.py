"""The official google-research/simclr checkpoints in PyTorch: a TensorFlow checkpoint reader that needs no
TensorFlow (``tf_checkpoint``) and the conversion of its variables into a run folder (``convert``)."""

from simclr.official.convert import import_official, official_state_dicts
from simclr.official.tf_checkpoint import TFCheckpointError, checkpoint_prefix, read_tf_checkpoint

__all__ = ["TFCheckpointError", "checkpoint_prefix", "import_official", "official_state_dicts", "read_tf_checkpoint"]
