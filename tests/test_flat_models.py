"""FlatModel views and the model zoo."""

import pytest
import torch
import torch.nn.functional as F

from dcasgd.compute.flat import FlatModel
from dcasgd.compute.models import ModelError, build_model


def test_parameters_and_gradients_are_views_of_flat_buffers():
    model = build_model("mlp", (1, 8, 8), 3, seed=0)
    reference = [p.detach().clone() for p in model.parameters()]
    flat = FlatModel(model)
    assert flat.num_params == sum(p.numel() for p in reference)
    torch.testing.assert_close(flat.params, torch.cat([r.reshape(-1) for r in reference]))
    flat.load(torch.zeros(flat.num_params))
    assert all(float(p.abs().sum()) == 0 for p in model.parameters())   # one copy loads everything
    flat.load(torch.cat([r.reshape(-1) for r in reference]))
    x, y = torch.randn(5, 1, 8, 8), torch.tensor([0, 1, 2, 0, 1])
    flat.zero_grad()
    F.cross_entropy(model(x), y).backward()
    # an independent copy computes the same gradient the ordinary way
    twin = build_model("mlp", (1, 8, 8), 3, seed=0)
    F.cross_entropy(twin(x), y).backward()
    expected = torch.cat([p.grad.reshape(-1) for p in twin.parameters()])
    torch.testing.assert_close(flat.grads, expected)
    assert all(p.grad.data_ptr() >= flat.grads.data_ptr() for p in model.parameters())


def test_batchnorm_statistics_live_in_a_flat_buffer():
    model = build_model("cnn", (1, 28, 28), 10, seed=0)
    flat = FlatModel(model)
    n_stats = sum(b.numel() for b in model.buffers() if b.is_floating_point())
    assert flat.buffers.numel() == n_stats == 2 * (16 + 32)
    model.train()
    model(torch.randn(4, 1, 28, 28))
    assert float(flat.buffers.abs().sum()) > 0 and not torch.equal(flat.buffers[:16], torch.zeros(16))
    flat.load(flat.params.clone(), torch.zeros_like(flat.buffers))
    assert float(model.features[1].running_mean.abs().sum()) == 0


def test_models_build_by_name_with_right_shapes():
    assert build_model("mlp", (1, 28, 28), 10)(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    assert build_model("cnn", (3, 32, 32), 10)(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    resnet = build_model("resnet20", (3, 32, 32), 10)
    assert resnet(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    # He et al. 2016, Table 6: ResNet-20 has 0.27M parameters
    assert 0.26e6 < sum(p.numel() for p in resnet.parameters()) < 0.28e6
    assert torch.equal(FlatModel(build_model("mlp", (4,), 2, seed=5)).params,
                       FlatModel(build_model("mlp", (4,), 2, seed=5)).params)
    with pytest.raises(ModelError, match="unknown model 'vgg'"):
        build_model("vgg", (1, 28, 28), 10)
    with pytest.raises(ModelError, match="image input"):
        build_model("cnn", (20,), 4)
