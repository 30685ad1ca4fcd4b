"""Linear probe on frozen features: standardise, then multinomial logistic regression by full-batch L-BFGS.

Zero initialisation and full batches make the fit deterministic: the same features give the same probe, with
no seed to thread through. The objective is scikit-learn's ``LogisticRegression`` (multinomial, L2 on the
weights, not on the bias) with ``C = 1 / (weight_decay * N)``; ``tests/test_evaluation.py`` checks they agree.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)


@dataclass
class LinearProbe:
    """A fitted probe: ``logits = ((x - mean) / std) @ weight.T + bias``.

    Args:
        mean: ``(F,)`` training-feature mean.
        std: ``(F,)`` training-feature standard deviation (constant features get 1).
        weight: ``(C, F)``.
        bias: ``(C,)``.
        converged: whether L-BFGS met its tolerance before ``max_iter``.
    """

    mean: torch.Tensor
    std: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor
    converged: bool = True

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """``(M, F)`` features -> ``(M, C)`` class scores."""
        standardised = (features.to(self.weight) - self.mean) / self.std  # (M, F)
        return standardised @ self.weight.T + self.bias

    def predict(self, features: torch.Tensor) -> torch.Tensor:
        """``(M, F)`` features -> ``(M,)`` int64 predicted classes."""
        return self.logits(features).argmax(dim=1)


@contextmanager
def _single_thread(device: torch.device) -> Iterator[None]:
    """One intra-op thread for a CPU fit: L-BFGS runs dozens of vector operations per step, too small to gain
    from threads, and on some machines (small VMs) every threaded BLAS call then costs milliseconds."""
    threads = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _check(features: torch.Tensor, labels: torch.Tensor, name: str) -> None:
    if features.ndim != 2 or labels.shape != (features.shape[0],) or features.shape[0] == 0:
        raise ValueError(
            f"expected (N, F) {name} features and (N,) labels with N > 0, got {tuple(features.shape)} and "
            f"{tuple(labels.shape)}"
        )


def fit_linear_probe(
    features: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int | None = None,
    weight_decay: float = 1e-4,
    max_iter: int = 1000,
    tolerance: float = 1e-5,
    dtype: torch.dtype | None = None,
) -> LinearProbe:
    """Fit multinomial logistic regression on standardised ``features``.

    Minimises ``mean cross-entropy + weight_decay / 2 * ||weight||^2`` with L-BFGS (strong Wolfe line search)
    on the full batch, on the device of ``features`` (with one thread on the CPU).

    Args:
        features: ``(N, F)`` training features.
        labels: ``(N,)`` classes in ``[0, num_classes)``.
        num_classes: default ``labels.max() + 1``.
        weight_decay: L2 strength on the weights (per sample: sklearn's ``C = 1 / (weight_decay * N)``).
        max_iter: L-BFGS iterations at most.
        tolerance: stop once every gradient entry is below this (sklearn's ``tol`` plays the same role).
        dtype: precision of the fit; default float64 on the CPU (as exact as sklearn, and about as fast as
            float32 there), float32 on accelerators.

    Returns:
        The fitted :class:`LinearProbe`.
    """
    _check(features, labels, "training")
    if dtype is None:
        dtype = torch.float64 if features.device.type == "cpu" else torch.float32
    x = features.to(dtype)
    labels = labels.to(x.device).long()
    num_classes = int(labels.max()) + 1 if num_classes is None else num_classes
    if int(labels.min()) < 0 or int(labels.max()) >= num_classes:
        raise ValueError(f"labels must lie in [0, {num_classes}), got [{int(labels.min())}, {int(labels.max())}]")
    mean = x.mean(dim=0)  # (F,)
    std = x.std(dim=0, unbiased=False)  # (F,)
    std = torch.where(std > 1e-12, std, torch.ones_like(std))  # constant features stay 0 after centring
    x = (x - mean) / std  # (N, F)

    weight = torch.zeros(num_classes, x.shape[1], dtype=dtype, device=x.device, requires_grad=True)  # (C, F)
    bias = torch.zeros(num_classes, dtype=dtype, device=x.device, requires_grad=True)  # (C,)
    optimizer = torch.optim.LBFGS(
        [weight, bias],
        lr=1.0,
        max_iter=max_iter,
        max_eval=2 * max_iter,
        history_size=20,
        tolerance_grad=tolerance,
        tolerance_change=1e-10,
        line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(x @ weight.T + bias, labels) + 0.5 * weight_decay * weight.square().sum()
        loss.backward()
        return loss

    with torch.enable_grad(), _single_thread(x.device):
        optimizer.step(closure)
    converged = optimizer.state[weight].get("n_iter", 0) < max_iter  # LBFGS keeps its state on the 1st param
    if not converged:
        logger.warning("the linear probe stopped at max_iter=%d before converging", max_iter)
    return LinearProbe(mean=mean, std=std, weight=weight.detach(), bias=bias.detach(), converged=converged)


def linear_probe_accuracy(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    num_classes: int | None = None,
    weight_decay: float = 1e-4,
    max_iter: int = 1000,
) -> float:
    """Test accuracy of a linear probe fitted on the training features (see :func:`fit_linear_probe`).

    Args:
        train_features: ``(N, F)``.
        train_labels: ``(N,)``.
        test_features: ``(M, F)``.
        test_labels: ``(M,)``.
        num_classes: default ``max(train_labels, test_labels) + 1``.
        weight_decay: L2 strength on the weights.
        max_iter: L-BFGS iterations at most.

    Returns:
        The fraction of test rows classified correctly, in ``[0, 1]``.
    """
    _check(test_features, test_labels, "test")
    if num_classes is None:
        num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    probe = fit_linear_probe(train_features, train_labels, num_classes, weight_decay, max_iter)
    predictions = probe.predict(test_features.to(probe.weight.device)).cpu()
    return (predictions == test_labels.cpu().long()).float().mean().item()
