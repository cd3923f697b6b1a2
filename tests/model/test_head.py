import pytest
import torch

from simclr.model.head import ProjectionHead


@pytest.mark.parametrize("layers", [1, 2, 3])
def test_shapes_and_layer_count(layers):
    head = ProjectionHead(64, num_layers=layers, out_dim=128)
    assert len(head.layers) == layers
    assert head(torch.randn(8, 64)).shape == (8, 128)


def test_v1_structure():
    head = ProjectionHead(32, num_layers=2, hidden_dim=48, out_dim=16)
    first, last = head.layers
    assert [type(m).__name__ for m in first] == ["Linear", "BatchNorm1d", "ReLU"]
    assert [type(m).__name__ for m in last] == ["Linear", "BatchNorm1d"]
    assert first[0].weight.shape == (48, 32) and first[0].bias is None
    assert last[1].bias is None and last[1].weight is not None  # scale-only BN before the loss


def test_no_bn_uses_biases():
    head = ProjectionHead(32, num_layers=2, bn=False)
    assert head.layers[0][0].bias is not None
    assert len(head.layers[1]) == 1


def test_identity_head_and_upto():
    assert ProjectionHead(32, num_layers=0)(torch.ones(2, 32)).shape == (2, 32)
    head = ProjectionHead(32, num_layers=3, out_dim=8)
    assert head(torch.randn(4, 32), upto=1).shape == (4, 32)


def test_negative_layers():
    with pytest.raises(ValueError):
        ProjectionHead(32, num_layers=-1)
