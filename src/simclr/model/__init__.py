"""The model: ResNet encoders f (``resnet``), projection heads g (``head``), NT-Xent (``losses``) and
the SimCLR module that joins them (``simclr``)."""

from simclr.model.head import ProjectionHead
from simclr.model.losses import contrastive_logits, nt_xent, nt_xent_with_accuracy
from simclr.model.resnet import (
           ARCHITECTURES,
           ResNet,
           build_encoder,
           resnet_from_state_dict,
)
from simclr.model.simclr import SimCLR

__all__ = ["ARCHITECTURES", "ProjectionHead", "ResNet", "SimCLR", "build_encoder", "contrastive_logits", "nt_xent",
           "nt_xent_with_accuracy", "resnet_from_state_dict"]
