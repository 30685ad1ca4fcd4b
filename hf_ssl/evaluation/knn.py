"""Weighted kNN classification of frozen features (Wu et al., 2018, "Unsupervised Feature Learning via
Non-Parametric Instance Discrimination", sec. 3.4), the protocol of InstDisc, lightly and solo-learn."""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Bound on the (test rows x train rows) similarity block held at once: 2**24 float32 values = 64 MiB.
_MAX_BLOCK_ELEMENTS = 2**24


def _check_labels(labels: torch.Tensor, num_classes: int, name: str) -> None:
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(
            f"{name} must lie in [0, {num_classes}), got values in "
            f"[{int(labels.min())}, {int(labels.max())}] (unlabelled rows are often marked -1)"
        )


def knn_predict(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    num_classes: int | None = None,
    k: int = 20,
    temperature: float = 0.07,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """Predict each test row's class by a similarity-weighted vote of its ``k`` nearest training rows.

    Features are L2-normalised; the neighbours of a test row are the ``k`` training rows of highest cosine
    similarity ``s``, each voting for its class with weight ``exp(s / temperature)``; the class with the
    largest summed weight wins (the lowest class index on a tie). Test rows are processed in chunks so that
    about ``2**24`` similarities at most are held at once (50k train x 10k test runs in ~64 MiB).

    Args:
        train_features: ``(N, F)`` the feature bank.
        train_labels: ``(N,)`` integer classes in ``[0, num_classes)``.
        test_features: ``(M, F)`` rows to classify.
        num_classes: number of classes; default ``train_labels.max() + 1``.
        k: neighbours per vote (clamped to ``N``).
        temperature: ``T`` of the weights ``exp(s / T)``.
        chunk_size: test rows per chunk; default from the memory bound above.

    Returns:
        ``(M,)`` int64 predicted classes, on the device of ``train_features``.
    """
    if train_features.ndim != 2 or test_features.ndim != 2 or train_features.shape[1] != test_features.shape[1]:
        raise ValueError(
            f"expected (N, F) train and (M, F) test features, got {tuple(train_features.shape)} and "
            f"{tuple(test_features.shape)}"
        )
    if train_labels.shape != (train_features.shape[0],):
        raise ValueError(
            f"train_labels {tuple(train_labels.shape)} do not match {train_features.shape[0]} feature rows"
        )
    if train_features.shape[0] == 0:
        raise ValueError("the kNN feature bank is empty")
    if k < 1 or temperature <= 0:
        raise ValueError(f"need k >= 1 and temperature > 0, got k={k}, temperature={temperature}")
    device = train_features.device
    train_labels = train_labels.to(device).long()
    num_classes = int(train_labels.max()) + 1 if num_classes is None else num_classes
    _check_labels(train_labels, num_classes, "train labels")
    k = min(k, train_features.shape[0])
    bank = F.normalize(train_features.float(), dim=1)  # (N, F)
    if chunk_size is None:
        chunk_size = max(1, _MAX_BLOCK_ELEMENTS // bank.shape[0])
    predictions = []
    for start in range(0, test_features.shape[0], chunk_size):
        queries = F.normalize(test_features[start : start + chunk_size].to(device).float(), dim=1)  # (m, F)
        similarity = queries @ bank.T  # (m, N) cosine similarities
        top_similarity, top_index = similarity.topk(k, dim=1)  # (m, k)
        weights = (top_similarity / temperature).exp()  # (m, k)
        votes = torch.zeros(queries.shape[0], num_classes, device=device)  # (m, C)
        votes.scatter_add_(1, train_labels[top_index], weights)  # sum the weights of each class
        predictions.append(votes.argmax(dim=1))
    if not predictions:
        return torch.empty(0, dtype=torch.long, device=device)
    return torch.cat(predictions)


def knn_accuracy(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    k: int = 20,
    temperature: float = 0.07,
    num_classes: int | None = None,
    chunk_size: int | None = None,
) -> float:
    """Accuracy of :func:`knn_predict` on labelled test features.

    Args:
        train_features: ``(N, F)`` the feature bank.
        train_labels: ``(N,)`` its classes.
        test_features: ``(M, F)``.
        test_labels: ``(M,)``.
        k: neighbours per vote.
        temperature: temperature of the vote weights.
        num_classes: number of classes; default ``max(train_labels, test_labels) + 1``.
        chunk_size: test rows per chunk (see :func:`knn_predict`).

    Returns:
        The fraction of test rows classified correctly, in ``[0, 1]``.
    """
    if test_labels.shape != (test_features.shape[0],) or test_labels.numel() == 0:
        raise ValueError(
            f"test_labels {tuple(test_labels.shape)} do not match {test_features.shape[0]} feature rows (> 0)"
        )
    if num_classes is None:
        num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    _check_labels(test_labels, num_classes, "test labels")
    predictions = knn_predict(
        train_features, train_labels, test_features, num_classes, k=k, temperature=temperature, chunk_size=chunk_size
    )
    return (predictions.cpu() == test_labels.cpu().long()).float().mean().item()
