"""timm's Hub format: ``config.json`` (``architecture``, ``model_args``, ``pretrained_cfg``) and ``model.safetensors``.

The folder loads with ``timm.create_model("hf-hub:<id>" or "local-dir:<path>", pretrained=True)`` and, through
transformers' ``TimmWrapperModel``, with ``AutoModel`` / ``AutoImageProcessor``; no ``hf_ssl`` needed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import timm
from torch import nn

TIMM_FILES = ("config.json", "model.safetensors")

# pretrained_cfg fields that describe the weights timm's registry ships for an architecture, not ours
_SOURCE_WEIGHT_FIELDS = ("tag", "description", "origin_url", "paper_name", "paper_ids", "notes", "license")


def save_timm_backbone(
    backbone: nn.Module,
    output_dir: str | Path,
    model_args: dict[str, Any],
    data_config: dict[str, Any],
    license: str,
    paper: tuple[str, str],
) -> dict[str, Any]:
    """Write ``backbone`` (a timm model without classifier) in timm's Hub format.

    ``config.json`` carries the rebuild arguments (``model_args``, e.g. a small-image stem) and a ``pretrained_cfg``
    with OUR preprocessing (``data_config``), our license and paper, so every timm and transformers front end
    reproduces the backbone and its input pipeline. ``num_classes`` leaves ``model_args``: transformers'
    ``TimmWrapperModel`` passes its own and would get it twice.

    Args:
        backbone: the timm module.
        output_dir: the export folder.
        model_args: the keyword arguments of ``timm.create_model`` that rebuild it.
        data_config: timm's preprocessing keys (input size, interpolation, crop, mean, std).
        license: the weights' license id.
        paper: ``(paper id, title)`` of the method.

    Returns:
        The written ``config.json`` as a dict.
    """
    output_dir = Path(output_dir)
    timm.models.save_for_hf(
        backbone.eval(), output_dir, model_args=model_args, data_config=data_config, safe_serialization=True
    )
    path = output_dir / "config.json"
    hub_config = json.loads(path.read_text())
    hub_config.get("model_args", {}).pop("num_classes", None)
    pretrained_cfg = hub_config["pretrained_cfg"]
    for key in _SOURCE_WEIGHT_FIELDS:
        pretrained_cfg.pop(key, None)
    pretrained_cfg.update(license=license, paper_ids=paper[0], paper_name=paper[1])
    path.write_text(json.dumps(hub_config, indent=2) + "\n")
    return hub_config


def card_fields(hub_config: dict[str, Any]) -> dict[str, Any]:
    """The preprocessing a timm export's card states (``model_cards/timm.md``), read from its written ``config.json``.

    Args:
        hub_config: what :func:`save_timm_backbone` returned.
    """
    pretrained_cfg = hub_config["pretrained_cfg"]
    return {
        "num_channels": pretrained_cfg["input_size"][0],
        "fixed_input_size": bool(pretrained_cfg.get("fixed_input_size")),
        "interpolation": pretrained_cfg["interpolation"],
        "crop_pct": pretrained_cfg["crop_pct"],
        "image_mean": list(pretrained_cfg["mean"]),
        "image_std": list(pretrained_cfg["std"]),
    }
