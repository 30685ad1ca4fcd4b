"""SimCLR's NT-Xent and projection head: closed-form values, numerical robustness, parity with lightly, model
gradients."""

from __future__ import annotations

import math
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import hf_ssl.losses
from hf_ssl import SimCLRConfig, SimCLRForPreTraining
from hf_ssl.models.simclr.loss import NTXentLoss, nt_xent_loss
from hf_ssl.models.simclr.modeling_simclr import SimCLRProjectionHead


def _reference_nt_xent(z_a: torch.Tensor, z_b: torch.Tensor, temperature: float) -> float:
    """Eq. 1 of Chen et al. (2020), written anchor by anchor in float64 with an explicit log-sum-exp."""
    z = F.normalize(torch.cat([z_a, z_b]).double(), dim=1)  # (2N, D)
    n = z_a.shape[0]
    total = 0.0
    for i in range(2 * n):
        positive = (i + n) % (2 * n)
        sims = [(z[i] @ z[k]).item() / temperature for k in range(2 * n) if k != i]
        top = max(sims)
        log_denominator = top + math.log(sum(math.exp(s - top) for s in sims))
        total += log_denominator - (z[i] @ z[positive]).item() / temperature
    return total / (2 * n)


@pytest.mark.parametrize("temperature", [1.0, 0.5, 0.1, 0.01])
def test_aligned_orthogonal_pairs_closed_form(temperature):
    """z_a == z_b with mutually orthogonal rows: loss = -log(e^{1/t} / (e^{1/t} + (2N - 2) e^0))."""
    n = 4
    z = 3.0 * torch.eye(8)[:n]  # one-hot rows, scaled to check that the loss normalises
    expected = -math.log(math.exp(1 / temperature) / (math.exp(1 / temperature) + (2 * n - 2)))
    loss = nt_xent_loss(z, z.clone(), temperature=temperature)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(expected, rel=1e-6, abs=1e-7)


@pytest.mark.parametrize("temperature", [0.5, 0.05, 0.01, 1e-4])
def test_opposite_orthogonal_pairs_closed_form(temperature):
    """z_b == -z_a, orthogonal rows: loss = log(1 + (2N - 2) e^{1/t}); e^{1/t} overflows fp32 at t = 0.01.

    At t = 1e-4 the self-similarity (1/t = 1e4) would survive a mask that subtracts a large constant.
    """
    n = 4
    z = torch.eye(8)[:n]
    # log(1 + (2N - 2) e^{1/t}) rearranged so that it is exact in float64 for any t.
    expected = 1 / temperature + math.log(2 * n - 2) + math.log1p(math.exp(-1 / temperature) / (2 * n - 2))
    loss = nt_xent_loss(z, -z, temperature=temperature)
    assert torch.isfinite(loss)
    assert loss.item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("temperature", [0.5, 0.07, 0.01])
def test_random_inputs_match_float64_reference(temperature):
    """Random inputs: the loss matches an independent float64 reference; gradients stay finite at tiny t."""
    torch.manual_seed(0)
    z_a = torch.randn(6, 10, requires_grad=True)
    z_b = torch.randn(6, 10, requires_grad=True)
    loss = nt_xent_loss(z_a, z_b, temperature=temperature)
    loss.backward()
    assert loss.item() == pytest.approx(_reference_nt_xent(z_a.detach(), z_b.detach(), temperature), rel=1e-5)
    assert torch.isfinite(z_a.grad).all() and torch.isfinite(z_b.grad).all()
    assert z_a.grad.abs().sum() > 0 and z_b.grad.abs().sum() > 0


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("temperature", [0.5, 0.01])
def test_half_precision_inputs_computed_in_fp32(dtype, temperature):
    """fp16/bf16 inputs: an fp32 loss equal to the loss on the same values upcast; grads keep the dtype."""
    torch.manual_seed(0)
    # Entries of ~200 in 64 dims: the squared norm (~2.6e6) overflows fp16, so a half-precision normalisation
    # would produce inf/nan; the loss must upcast before normalising.
    z_a = (200 * torch.randn(8, 64)).to(dtype).requires_grad_()
    z_b = (200 * torch.randn(8, 64)).to(dtype).requires_grad_()
    loss = nt_xent_loss(z_a, z_b, temperature=temperature)
    assert loss.dtype == torch.float32
    assert torch.isfinite(loss)
    expected = nt_xent_loss(z_a.detach().float(), z_b.detach().float(), temperature=temperature)
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=1e-6)
    assert loss.item() == pytest.approx(_reference_nt_xent(z_a.detach(), z_b.detach(), temperature), rel=1e-5)
    loss.backward()
    assert z_a.grad.dtype == dtype and torch.isfinite(z_a.grad).all() and torch.isfinite(z_b.grad).all()


def test_loss_is_symmetric_and_permutation_invariant():
    """Swapping the two views, or permuting the pairs, leaves the loss unchanged."""
    torch.manual_seed(0)
    z_a, z_b = torch.randn(7, 5), torch.randn(7, 5)
    loss = nt_xent_loss(z_a, z_b, temperature=0.2)
    perm = torch.randperm(7)
    torch.testing.assert_close(nt_xent_loss(z_b, z_a, temperature=0.2), loss)
    torch.testing.assert_close(nt_xent_loss(z_a[perm], z_b[perm], temperature=0.2), loss)
    # ...but breaking the pairing changes it: the loss does look at which row is whose partner.
    shifted = nt_xent_loss(z_a, z_b.roll(1, dims=0), temperature=0.2)
    assert not torch.allclose(shifted, loss)


def test_module_matches_function():
    """NTXentLoss(t)(a, b) is nt_xent_loss(a, b, t)."""
    torch.manual_seed(0)
    z_a, z_b = torch.randn(5, 4), torch.randn(5, 4)
    module = NTXentLoss(temperature=0.3)
    torch.testing.assert_close(module(z_a, z_b), nt_xent_loss(z_a, z_b, temperature=0.3), rtol=0, atol=0)


@pytest.mark.parametrize("temperature", [0.1, 0.5, 1.0])
@pytest.mark.parametrize("batch_size", [2, 16])
def test_parity_with_lightly(temperature, batch_size):
    """Same value and same gradients as lightly's NTXentLoss on random inputs, to 1e-5."""
    lightly_loss = pytest.importorskip("lightly.loss", reason="lightly is not installed (pip install lightly)")
    torch.manual_seed(0)
    z_a = torch.randn(batch_size, 32, requires_grad=True)
    z_b = torch.randn(batch_size, 32, requires_grad=True)
    ref_a = z_a.detach().clone().requires_grad_()
    ref_b = z_b.detach().clone().requires_grad_()

    ours = nt_xent_loss(z_a, z_b, temperature=temperature)
    theirs = lightly_loss.NTXentLoss(temperature=temperature)(ref_a, ref_b)
    ours.backward()
    theirs.backward()

    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(z_a.grad, ref_a.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(z_b.grad, ref_b.grad, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("shape_a", "shape_b"),
    [((4, 8), (5, 8)), ((4, 8), (4, 7)), ((4,), (4,)), ((2, 4, 8), (2, 4, 8))],
)
def test_shape_validation(shape_a, shape_b):
    """Mismatched or non-2-D inputs raise a ValueError that names both shapes."""
    z_a, z_b = torch.randn(shape_a), torch.randn(shape_b)
    message = re.escape(f"expected two (N, D) tensors of one shape, got {shape_a} and {shape_b}")
    with pytest.raises(ValueError, match=message):
        nt_xent_loss(z_a, z_b)
    with pytest.raises(ValueError, match=message):
        NTXentLoss()(z_a, z_b)


@pytest.mark.parametrize("num_layers", [1, 2, 3])
def test_projection_head_shapes(num_layers):
    """num_layers Linear layers (num_layers - 1 BatchNorms), mapping (B, input_dim) to (B, output_dim)."""
    torch.manual_seed(0)
    head = SimCLRProjectionHead(input_dim=12, hidden_dim=20, output_dim=6, num_layers=num_layers)
    linears = [m for m in head.modules() if isinstance(m, nn.Linear)]
    assert len(linears) == num_layers
    assert sum(isinstance(m, nn.BatchNorm1d) for m in head.modules()) == num_layers - 1
    assert linears[0].in_features == 12 and linears[-1].out_features == 6
    assert all(layer.out_features == 20 for layer in linears[:-1])
    assert head(torch.randn(5, 12)).shape == (5, 6)


def test_projection_head_rejects_zero_layers():
    """num_layers < 1 is a ValueError."""
    with pytest.raises(ValueError, match="num_layers must be >= 1"):
        SimCLRProjectionHead(input_dim=4, num_layers=0)


def _tiny_simclr(**kwargs) -> SimCLRForPreTraining:
    torch.manual_seed(0)
    config = SimCLRConfig(backbone="resnet18", image_size=32, projection_hidden_dim=32, projection_dim=16, **kwargs)
    return SimCLRForPreTraining(config)


def test_simclr_every_parameter_gets_a_gradient():
    """One backward pass reaches every parameter of the tiny SimCLR model with a finite, non-zero gradient."""
    # timm's ResNet zero-initialises the last BatchNorm of each residual block (zero_init_last), which makes
    # the gradients of the convolutions before it exactly zero at init; disabled so "non-zero" is meaningful.
    model = _tiny_simclr(backbone_kwargs={"zero_init_last": False})
    model.train()
    torch.manual_seed(1)
    out = model(torch.randn(4, 2, 3, 32, 32))
    out.loss.backward()
    assert torch.isfinite(out.loss)
    params = dict(model.named_parameters())
    missing = [name for name, p in params.items() if p.requires_grad and p.grad is None]
    zero = [name for name, p in params.items() if p.grad is not None and not p.grad.abs().sum() > 0]
    not_finite = [name for name, p in params.items() if p.grad is not None and not p.grad.isfinite().all()]
    assert not missing, f"no gradient: {missing}"
    assert not zero, f"zero gradient: {zero}"
    assert not not_finite, f"non-finite gradient: {not_finite}"


def test_simclr_output_shapes_and_loss():
    """Outputs have the documented shapes and the loss is NT-Xent of the two projected views."""
    model = _tiny_simclr()
    model.train()
    torch.manual_seed(1)
    out = model(torch.randn(4, 2, 3, 32, 32))
    assert out.projections.shape == (4, 2, 16)
    assert out.features.shape == (4, 2, model.simclr.num_features)
    expected = nt_xent_loss(out.projections[:, 0], out.projections[:, 1], model.config.loss_temperature)
    torch.testing.assert_close(out.loss, expected)
    with pytest.raises(ValueError, match=r"\(B, 2, C, H, W\)"):
        model(torch.randn(4, 3, 32, 32))


def test_simclr_loss_follows_the_configured_temperature():
    """The model's loss is NT-Xent at ITS temperature (a model ignoring the config would use the default 0.5)."""
    torch.manual_seed(1)
    x = torch.randn(4, 2, 3, 32, 32)
    for temperature in (0.1, 2.0):
        model = _tiny_simclr(loss_temperature=temperature).train()
        out = model(x)
        expected = nt_xent_loss(out.projections[:, 0], out.projections[:, 1], temperature)
        torch.testing.assert_close(out.loss, expected)
        assert not torch.allclose(out.loss, nt_xent_loss(out.projections[:, 0], out.projections[:, 1], 0.5))


@pytest.mark.parametrize("gather", [True, False])
def test_simclr_gathers_negatives_only_when_configured(monkeypatch, gather):
    """Under several processes the model gathers the other processes' views exactly when gather_distributed is set
    (a stand-in gather that appends a fixed block of views makes the difference visible in the loss)."""
    calls = []

    def fake_gather(tensor):
        calls.append(tuple(tensor.shape))
        return torch.cat([tensor, torch.nn.functional.normalize(torch.ones_like(tensor), dim=1)])

    monkeypatch.setattr(hf_ssl.losses, "is_distributed", lambda: True)
    monkeypatch.setattr(hf_ssl.losses, "get_rank", lambda: 0)
    monkeypatch.setattr(hf_ssl.losses, "all_gather_with_grad", fake_gather)
    model = _tiny_simclr(gather_distributed=gather).train()
    torch.manual_seed(1)
    out = model(torch.randn(4, 2, 3, 32, 32))
    assert bool(calls) is gather
    local = nt_xent_loss(out.projections[:, 0], out.projections[:, 1], 0.5, gather_distributed=False)
    assert torch.allclose(out.loss, local) is not gather
