"""Every exported model equals its eager module; RepVGG's deploy form equals its training form."""

from __future__ import annotations

import io

import pytest
import torch

from fv2es import models
from fv2es.models.visual import RepVGGBlock, RepVGGEncoder, reparameterise
from fv2es.tritonserver import REPOSITORY


def randomise_batchnorm(module: torch.nn.Module, seed: int = 0) -> None:
    generator = torch.Generator().manual_seed(seed)
    for bn in module.modules():
        if isinstance(bn, torch.nn.BatchNorm2d):
            n = bn.num_features
            bn.running_mean.copy_(torch.randn(n, generator=generator) * 0.5)
            bn.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
            bn.weight.data.copy_(torch.rand(n, generator=generator) + 0.5)
            bn.bias.data.copy_(torch.randn(n, generator=generator) * 0.2)


@pytest.fixture(scope="module", params=models.ENCODER_NAMES)
def exported(request):
    torch.manual_seed(0)
    name = request.param
    eager = models.create(name).eval()
    if name == "visual_encoder":
        randomise_batchnorm(eager)
    buffer = io.BytesIO()
    torch.jit.save(models.to_torchscript(name, eager), buffer)
    buffer.seek(0)
    return name, eager, torch.jit.load(buffer)


@pytest.mark.parametrize("batch", [1, 5])
def test_torchscript_equals_eager(exported, batch):
    name, eager, scripted = exported
    torch.manual_seed(batch)
    inputs = models.example_inputs(name, batch=batch)
    with torch.no_grad():
        expected, got = eager(*inputs), scripted(*inputs)
    assert got.shape == expected.shape
    assert torch.isfinite(got).all()
    assert (got - expected).abs().max().item() <= 1e-4


def test_text_encoder_without_padding_equals_eager():
    eager = models.create("text_encoder").eval()
    scripted = models.to_torchscript("text_encoder", eager)
    ids = torch.randint(1000, 2000, (2, 100))
    mask = torch.ones_like(ids)  # a full-length text: the traced masking path must still hold
    with torch.no_grad():
        assert (scripted(ids, mask) - eager(ids, mask)).abs().max().item() <= 1e-4


@pytest.mark.parametrize("cin, cout", [(8, 8), (8, 16)])  # with and without the identity branch
def test_repvgg_block_reparameterisation(cin, cout):
    torch.manual_seed(0)
    block = RepVGGBlock(cin, cout)
    randomise_batchnorm(block, seed=cin + cout)
    block.eval()
    x = torch.randn(4, cin, 12, 12)
    with torch.no_grad():
        expected = block(x)
        block.reparameterise()
        got = block(x)
    assert (got - expected).abs().max().item() <= 1e-5 * max(1.0, expected.abs().max().item())


def test_deploy_form_has_no_batchnorm_and_no_1x1_conv():
    torch.manual_seed(0)
    model = RepVGGEncoder()
    randomise_batchnorm(model)
    deployed = reparameterise(model)
    assert all(not isinstance(m, torch.nn.BatchNorm2d) for m in deployed.modules())
    assert all(m.kernel_size != (1, 1) for m in deployed.modules() if isinstance(m, torch.nn.Conv2d))
    # The training form is untouched: it still trains with its branches.
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())


@pytest.mark.parametrize("source", ["fresh export", "served repository"])
def test_exported_visual_encoder_has_no_batchnorm_and_no_1x1_conv(source):
    if source == "fresh export":
        model = RepVGGEncoder()
        randomise_batchnorm(model)
        scripted = models.to_torchscript("visual_encoder", model)
    else:
        scripted = torch.jit.load(str(REPOSITORY / "visual_encoder" / "1" / "model.pt"))
    assert "batch_norm" not in str(scripted.inlined_graph)
    state = scripted.state_dict()
    assert not any("running_mean" in key for key in state)
    kernels = [tuple(w.shape[-2:]) for w in state.values() if w.dim() == 4]
    assert kernels and (1, 1) not in kernels and set(kernels) <= {(3, 3), (5, 5)}


@pytest.mark.parametrize("name", models.ENCODER_NAMES)
def test_repository_models_load_and_run(name):
    scripted = torch.jit.load(str(REPOSITORY / name / "1" / "model.pt"))
    with torch.no_grad():
        out = scripted(*models.example_inputs(name, batch=2))
    assert torch.isfinite(out).all()
