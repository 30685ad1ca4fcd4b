"""Backbones built from their own libraries, with the preprocessing they expect (one source for training and export)."""

from __future__ import annotations

import os

import torch
from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel

from hf_ssl.backbones.timm import reset_to_timm_init
from hf_ssl.errors import UsageError


def check_checkpoint_path(model_name_or_path: str | os.PathLike) -> str:
    """``model_name_or_path`` as a string, once it is a checkpoint folder or could be a Hub id.

    Raises:
        UsageError: a folder without ``config.json``, or a path to no folder.
    """
    path = str(model_name_or_path)
    if os.path.isdir(path) and not os.path.isfile(os.path.join(path, "config.json")):
        raise UsageError(f"{path}: not a checkpoint folder (no config.json)")
    if not os.path.isdir(path) and (path.startswith((".", "/", "~")) or path.count("/") > 1):
        raise UsageError(f"{path}: no such checkpoint folder")
    return path


def load_backbone(
    model_name_or_path: str | os.PathLike,
    optional_weights: tuple[str, ...] = (),
    config: PretrainedConfig | None = None,
) -> PreTrainedModel:
    """The backbone of a checkpoint (``AutoModel``: e.g. :class:`~hf_ssl.SimCLRModel` of a pretraining folder, or
    the model of an export), in eval mode.

    Args:
        model_name_or_path: a checkpoint folder or Hub id.
        optional_weights: name prefixes of weights that may be missing because the caller never uses them (e.g.
            ``"pooler."``: a BERT checkpoint saved without the pooler that mean-pooled features do not read).
        config: the checkpoint's config when the caller has read it already (else it is read here).

    Raises:
        UsageError: no such folder, a folder that is not a checkpoint, or a checkpoint that lacks weights the
            backbone needs or has them in the wrong shape (they would silently stay random).
    """
    path = check_checkpoint_path(model_name_or_path)
    try:
        config = config if config is not None else AutoConfig.from_pretrained(path)
        model_args = getattr(config, "model_args", None)
        if isinstance(model_args, dict) and "num_classes" in model_args:
            # a timm folder as timm's save_for_hf writes it: transformers' TimmWrapperModel passes num_classes=0
            # itself (the backbone without classifier), and would get it twice
            config.model_args = {key: value for key, value in model_args.items() if key != "num_classes"}
        model, info = AutoModel.from_pretrained(path, config=config, output_loading_info=True)
    except (OSError, ValueError) as err:
        raise UsageError(f"{path}: cannot load a checkpoint from it: {err}") from err
    missing = sorted(key for key in info.get("missing_keys") or () if not key.startswith(optional_weights))
    mismatched = sorted(str(item) for item in info.get("mismatched_keys") or ())
    if missing or mismatched:
        problems = missing + mismatched
        shown = ", ".join(problems[:5]) + (", ..." if len(problems) > 5 else "")
        raise UsageError(
            f"{path}: {len(missing)} backbone weights are missing and {len(mismatched)} have the wrong shape for "
            f"{type(model).__name__} ({shown}); refusing to use randomly initialised layers"
        )
    return model.eval()


def random_init_backbone(config: PretrainedConfig, seed: int) -> PreTrainedModel:
    """The architecture of ``config`` at random initialisation (``AutoModel.from_config``, eval mode), seeded; the
    global RNG is left untouched.

    Building a model never downloads weights (objectives load pretrained backbones only when a run starts), so the
    baseline is random even for a config that started from pretrained weights.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModel.from_config(config).eval()
    if getattr(model, "timm_model", None) is not None:  # transformers' TimmWrapperModel
        reset_to_timm_init(model, seed)
    return model
