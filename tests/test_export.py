"""Backbone export (timm Hub format), model cards and Hub upload: the export loads without hf_ssl."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
import pytest
import timm
import torch
import yaml
from huggingface_hub import CommitInfo, ModelCard, RepoUrl
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import BertConfig

from hf_ssl import SimCLRConfig, SimCLRForPreTraining, SimCLRModel, UsageError, hub
from hf_ssl.backbones.timm import eval_transform
from hf_ssl.callbacks import RUN_INFO_FILE, RunInfo
from hf_ssl.cli import main
from hf_ssl.evaluation import EvaluationArguments, evaluate
from hf_ssl.export import EVAL_RESULTS_FILE, export_backbone
from hf_ssl.export.model_card import card_metadata, evaluation_summary, hub_datasets, render_model_card

EXPORT_FILES = {"config.json", "model.safetensors", "README.md"}


def _perturb_(model: torch.nn.Module) -> None:
    """Move every weight and statistic away from its seeded init, so parity cannot come from equal seeds."""
    with torch.no_grad():
        for name, tensor in model.state_dict().items():  # shares storage with the parameters and buffers
            if not tensor.is_floating_point():
                continue
            if name.endswith("running_var"):
                tensor.mul_(torch.rand_like(tensor) + 0.5)
            else:
                tensor.add_(0.05 * torch.randn_like(tensor))


def _checkpoint(config: SimCLRConfig, path: Path) -> Path:
    """A perturbed SimCLRForPreTraining (backbone + projection head) saved with ``save_pretrained``."""
    model = SimCLRForPreTraining(config)
    _perturb_(model)
    model.save_pretrained(path)
    return path


def _resnet18_config() -> SimCLRConfig:
    return SimCLRConfig(backbone="resnet18", image_size=32, projection_hidden_dim=32, projection_dim=16)


def _card_parts(card: str) -> tuple[dict[str, Any], str]:
    _, front, body = card.split("---\n", 2)
    return yaml.safe_load(front), body


def _table_row(body: str, first_cell: str) -> list[str]:
    for line in body.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0] == first_cell:
            return cells[1:]
    raise AssertionError(f"no table row {first_cell!r} in the card:\n{body}")


# runs in a fresh interpreter that never imports hf_ssl: the export must stand on timm / transformers alone
_LOAD_WITHOUT_HF_SSL = textwrap.dedent(
    """
    import sys

    import timm
    import torch
    from PIL import Image
    from transformers import AutoImageProcessor, AutoModel

    out, inputs_file, image_file, result_file = sys.argv[1:5]
    x = torch.load(inputs_file)
    image = Image.open(image_file).convert("RGB")
    timm_model = timm.create_model("local-dir:" + out, pretrained=True, num_classes=0).eval()
    hf_model = AutoModel.from_pretrained(out).eval()
    assert type(hf_model).__name__ == "TimmWrapperModel", type(hf_model)
    data_config = timm.data.resolve_model_data_config(timm_model)
    processor = AutoImageProcessor.from_pretrained(out)
    with torch.no_grad():
        result = {
            "timm": timm_model(x),
            "transformers": hf_model(pixel_values=x).pooler_output,
            "timm_pixels": timm.data.create_transform(**data_config, is_training=False)(image),
            "processor_pixels": processor(image, return_tensors="pt").pixel_values[0],
        }
    leaked = sorted(name for name in sys.modules if name == "hf_ssl" or name.startswith("hf_ssl."))
    assert not leaked, leaked
    torch.save(result, result_file)
    """
)


@pytest.mark.slow
@pytest.mark.parametrize("backbone", ["convnext_atto_small_stem", "resnet18"])
def test_export_loads_without_hf_ssl_with_equal_features(backbone, tiny_simclr_config, tmp_path):
    config = tiny_simclr_config if backbone == "convnext_atto_small_stem" else _resnet18_config()
    model_dir = _checkpoint(config, tmp_path / "ckpt")
    out = export_backbone(model_dir, tmp_path / "export")
    assert out == tmp_path / "export"

    x = torch.randn(4, 3, 32, 32)
    torch.save(x, tmp_path / "x.pt")
    pixels = np.random.default_rng(0).integers(0, 256, (41, 53, 3), dtype=np.uint8)  # not square, not 32
    Image.fromarray(pixels).save(tmp_path / "image.png")
    run = subprocess.run(
        [
            sys.executable,
            "-c",
            _LOAD_WITHOUT_HF_SSL,
            str(out),
            str(tmp_path / "x.pt"),
            str(tmp_path / "image.png"),
            str(tmp_path / "result.pt"),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    result = torch.load(tmp_path / "result.pt")

    reference = SimCLRModel.from_pretrained(model_dir).eval()
    with torch.no_grad():
        expected = reference(x).pooler_output
        torch.manual_seed(0)
        fresh = timm.create_model(config.backbone, num_classes=0, **config.timm_kwargs).eval()(x)
    assert expected.shape == (4, reference.num_features)
    assert not torch.allclose(fresh, expected, atol=1e-3)  # the exported weights are not a seeded init
    torch.testing.assert_close(result["timm"], expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(result["transformers"], expected, atol=1e-5, rtol=1e-5)

    # the export carries our preprocessing: both ecosystems prepare an image as hf_ssl's evaluation does
    ours = eval_transform(config.data_config)(Image.open(tmp_path / "image.png").convert("RGB"))
    assert ours.shape == (3, 32, 32)
    torch.testing.assert_close(result["timm_pixels"], ours, atol=1e-5, rtol=0)
    torch.testing.assert_close(result["processor_pixels"], ours, atol=1e-5, rtol=0)


def test_export_folder_config_and_weights(tiny_simclr_config, tmp_path):
    tiny_simclr_config.image_mean = [0.5, 0.4, 0.3]  # not timm's ImageNet defaults: must come from our config
    tiny_simclr_config.image_std = [0.2, 0.25, 0.3]
    model_dir = _checkpoint(tiny_simclr_config, tmp_path / "ckpt")
    out = export_backbone(model_dir, tmp_path / "export")

    assert {p.name for p in out.iterdir()} == EXPORT_FILES
    hub_config = json.loads((out / "config.json").read_text())
    assert hub_config["architecture"] == "convnext_atto"
    assert hub_config["num_features"] == 320
    assert hub_config["model_args"]["patch_size"] == 2  # the small-image stem survives the export
    assert "num_classes" not in hub_config["model_args"]
    cfg = hub_config["pretrained_cfg"]
    assert cfg["mean"] == [0.5, 0.4, 0.3]
    assert cfg["std"] == [0.2, 0.25, 0.3]
    assert cfg["input_size"] == [3, 32, 32]
    assert cfg["interpolation"] == "bilinear" and cfg["crop_pct"] == 1.0
    assert "tag" not in cfg  # timm's description of its own ImageNet weights is not carried over

    with safe_open(model_dir / "model.safetensors", "pt") as handle:
        assert any(key.startswith("projection_head.") for key in handle.keys())
    with safe_open(out / "model.safetensors", "pt") as handle:
        exported = set(handle.keys())
    assert not any("projection" in key for key in exported)
    bare = timm.create_model("convnext_atto", num_classes=0, **tiny_simclr_config.timm_kwargs)
    assert exported == set(bare.state_dict())


RUN_INFO = {
    "objective": "simclr",
    "hf_ssl_version": "0.1.0",
    "dataset_name": "uoft-cs/cifar10",
    "dataset_config_name": None,
    "train_split": "train",
    "columns": {"image": "img"},
    "num_examples": 50000,
    "global_step": 1200,
    "world_size": 2,
    "train_metrics": {"train_runtime": 812.4, "train_loss": 4.56789, "epoch": 3.1},
    "training_args": {
        "max_steps": 1234,
        "num_train_epochs": 3.0,
        "per_device_train_batch_size": 64,
        "gradient_accumulation_steps": 2,
        "learning_rate": 0.0003,
        "weight_decay": 1e-06,
        "lr_scheduler_type": "cosine",
        "warmup_steps": 50,
        "seed": 7,
        "optim": "adamw_torch",
    },
}

EVAL_RESULTS = {
    "model": "ckpt",
    "dataset": "uoft-cs/cifar10",
    "split": "test",
    "num_train": 50000,
    "num_test": 10000,
    "knn": {"accuracy": 0.6123, "k": 20, "temperature": 0.07},
    "linear_probe": {"accuracy": 0.6543},
    "baselines": {
        "raw_pixels": {"knn": {"accuracy": 0.3012}, "linear_probe": {"accuracy": 0.3987}},
        "random_init": {"knn": {"accuracy": 0.2345}, "linear_probe": {"accuracy": 0.3456}},
    },
}


@pytest.mark.parametrize("where", ["model_dir", "explicit"])
def test_model_card_renders_evaluation_and_training(where, tiny_simclr_config, tmp_path):
    tiny_simclr_config.loss_temperature = 0.2
    model_dir = _checkpoint(tiny_simclr_config, tmp_path / "ckpt")
    (model_dir / RUN_INFO_FILE).write_text(json.dumps(RUN_INFO))
    eval_file = model_dir / EVAL_RESULTS_FILE if where == "model_dir" else tmp_path / "elsewhere.json"
    eval_file.write_text(json.dumps(EVAL_RESULTS))

    out = export_backbone(model_dir, tmp_path / "export", eval_file=None if where == "model_dir" else eval_file)
    assert {p.name for p in out.iterdir()} == EXPORT_FILES
    meta, body = _card_parts((out / "README.md").read_text())
    assert meta["library_name"] == "timm"
    assert meta["license"] == "apache-2.0"
    assert meta["pipeline_tag"] == "image-feature-extraction"
    assert set(meta["tags"]) == {"hf_ssl", "self-supervised", "simclr", "image-feature-extraction", "timm"}
    assert meta["datasets"] == ["uoft-cs/cifar10"]
    assert "arXiv:2002.05709" in body
    assert "not evaluated" not in body

    # the same rows and rounding as `hf-ssl evaluate` prints
    assert _table_row(body, "SimCLR convnext_atto (this model)") == ["61.2%", "65.4%"]
    assert _table_row(body, "random init") == ["23.4%", "34.6%"]
    assert _table_row(body, "raw pixels") == ["30.1%", "39.9%"]
    assert "k = 20, temperature 0.07" in body

    assert _table_row(body, "loss")[0].startswith("NT-Xent, temperature 0.2")
    assert _table_row(body, "backbone") == ["`timm.create_model('convnext_atto', patch_size=2)`"]
    assert _table_row(body, "projection head (dropped in this export)") == ["2 layers, hidden 32, output 16"]
    assert _table_row(body, "dataset") == ["uoft-cs/cifar10, split `train`, 50000 images"]
    assert _table_row(body, "training length") == ["1200 optimisation steps (3.10 epochs)"]  # run, not asked
    assert _table_row(body, "batch size")[0].startswith("256 (64 per device x 2 processes x 2 accumulation")
    assert "learning rate 0.0003" in _table_row(body, "optimisation")[0]
    assert _table_row(body, "mean training loss") == ["4.5679"]
    assert _table_row(body, "normalise") == ["mean [0.485, 0.456, 0.406], std [0.229, 0.224, 0.225]"]
    assert 'timm.create_model("hf-hub:<user>/<model-name>", pretrained=True, num_classes=0)' in body
    assert 'AutoModel.from_pretrained("<user>/<model-name>")' in body

    # the Hub reads the results from the card's model-index
    card = ModelCard((out / "README.md").read_text())
    results = {r.metric_name: r for r in card.data.eval_results}
    assert set(results) == {"kNN accuracy", "linear probe accuracy"}
    assert results["kNN accuracy"].metric_value == 0.6123 and results["linear probe accuracy"].metric_value == 0.6543
    assert {(r.dataset_type, r.dataset_split, r.task_type) for r in results.values()} == {
        ("uoft-cs/cifar10", "test", "image-classification")
    }
    assert card.data.model_name == "SimCLR convnext_atto"


def test_model_index_does_not_call_fine_tuned_accuracy_frozen():
    def eval_results(results):
        front = card_metadata(
            model_name="m", library_name="timm", pipeline_tag="image-feature-extraction", license="apache-2.0",
            tags=[], run_info=None, evaluation={"dataset": "digits", "split": "test", "modality": "image", **results},
        )  # fmt: skip
        return {r.metric_name: r.task_name for r in ModelCard(f"---\n{front}\n---\n").data.eval_results}

    # the Hub groups results by task, so kNN and fine-tuning share one name: not "frozen" when one is fine-tuned
    both = eval_results({"knn": {"accuracy": 0.5}, "finetune": {"accuracy": 0.7}})
    assert both == {"kNN accuracy": "classification", "fine-tune accuracy": "classification"}
    assert eval_results({"knn": {"accuracy": 0.5}}) == {"kNN accuracy": "classification of frozen features"}


def test_model_card_without_evaluation_or_run_info(tiny_simclr_config, tmp_path):
    model_dir = _checkpoint(tiny_simclr_config, tmp_path / "ckpt")
    out = export_backbone(model_dir, tmp_path / "export")
    meta, body = _card_parts((out / "README.md").read_text())
    assert "datasets" not in meta
    assert "not evaluated" in body
    assert "| features | kNN accuracy |" not in body
    assert _table_row(body, "dataset") == [f"unknown (the checkpoint has no `{RUN_INFO_FILE}`)"]


def test_missing_eval_file_is_an_error(tiny_simclr_config, tmp_path):
    model_dir = _checkpoint(tiny_simclr_config, tmp_path / "ckpt")
    with pytest.raises(UsageError, match="nope.json"):
        export_backbone(model_dir, tmp_path / "export", eval_file=tmp_path / "nope.json")


def test_evaluation_without_baselines():
    summary = evaluation_summary({"knn": {"accuracy": 0.5}}, "mine")
    assert summary["columns"] == ["kNN accuracy"]  # only the protocols that were run
    assert summary["rows"] == [{"name": "mine", "cells": ["50.0%"]}]


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("uoft-cs/cifar10", ["uoft-cs/cifar10"]),
        ("cifar10", ["cifar10"]),
        (None, []),
        ("digits", []),  # embedded datasets are not Hub ids
        ("digit-scenes", []),
        ("digits (embedded scikit-learn digits)", []),
        ("data/train.parquet", []),
        ("/abs/folder/x", []),
    ],
)
def test_hub_datasets(name, expected):
    assert hub_datasets(RunInfo(objective="simclr", hf_ssl_version="0", dataset_name=name)) == expected


def test_render_model_card_errors():
    simclr_folder = Path(inspect.getfile(SimCLRModel)).parent
    with pytest.raises(FileNotFoundError, match="no model card template 'no_such_objective.md'"):
        render_model_card("no_such_objective", folder=simclr_folder)
    with pytest.raises(jinja2.UndefinedError):
        render_model_card("model_card", folder=simclr_folder)  # every variable is required


def test_a_card_template_is_looked_up_in_its_folder_first_and_imports_the_shared_blocks(tmp_path):
    (tmp_path / "card.md").write_text("{{ never_rendered }}")  # the objective's own file of a shared name wins
    (tmp_path / "model_card.md").write_text(
        '{% import "card.md" as shared with context %}# {{ model_name }}\n{{ shared.training_rows_table() }}'
    )
    with pytest.raises(jinja2.UndefinedError, match="never_rendered"):
        render_model_card("model_card", folder=tmp_path, model_name="toy", training_rows=[("seed", "0")])
    (tmp_path / "card.md").unlink()
    card = render_model_card("model_card", folder=tmp_path, model_name="toy", training_rows=[("seed", "0")])
    assert card == "# toy\n| seed | 0 |\n"


def test_refuses_unknown_type_and_unsafe_output_dirs(tiny_simclr_config, tmp_path):
    BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37).save_pretrained(
        tmp_path / "bert"
    )
    with pytest.raises(ValueError, match="no exporter for model type 'bert'.*hf_ssl_simclr"):
        export_backbone(tmp_path / "bert", tmp_path / "bert_export")
    with pytest.raises(UsageError, match="absent: not a checkpoint folder"):
        export_backbone(tmp_path / "absent", tmp_path / "export")

    model_dir = _checkpoint(tiny_simclr_config, tmp_path / "ckpt")
    with pytest.raises(ValueError, match="overwrite the checkpoint"):
        export_backbone(model_dir, model_dir)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="notes.txt"):
        export_backbone(model_dir, tmp_path / "busy")
    # a previous export (and a git clone's dotfiles) may be overwritten
    out = export_backbone(model_dir, tmp_path / "export")
    (out / ".gitattributes").write_text("*.safetensors filter=lfs\n")
    export_backbone(model_dir, out)
    assert {p.name for p in out.iterdir()} == EXPORT_FILES | {".gitattributes"}


def test_refuses_checkpoint_missing_backbone_weights(tiny_simclr_config, tmp_path):
    model_dir = _checkpoint(tiny_simclr_config, tmp_path / "ckpt")
    weights = load_file(model_dir / "model.safetensors")
    dropped = next(key for key in weights if key.startswith("simclr.backbone.stem"))
    del weights[dropped]
    save_file(weights, model_dir / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(UsageError, match="1 backbone weights are missing"):
        export_backbone(model_dir, tmp_path / "export")


class FakeHfApi:
    """Records what would be sent to the Hub; the token's namespace is ``me``."""

    calls: list[tuple[str, dict[str, Any]]] = []

    def __init__(self, token: str | None = None, **kwargs: Any):
        self.calls.append(("init", {"token": token}))

    def create_repo(self, repo_id: str, **kwargs: Any) -> RepoUrl:
        self.calls.append(("create_repo", {"repo_id": repo_id, **kwargs}))
        return RepoUrl(f"https://huggingface.co/{repo_id if '/' in repo_id else 'me/' + repo_id}")

    def upload_folder(self, *, repo_id: str, folder_path: str | Path, **kwargs: Any) -> CommitInfo:
        folder = Path(folder_path)
        self.calls.append(
            (
                "upload_folder",
                {
                    "repo_id": repo_id,
                    "folder_path": folder,
                    "files": {p.name for p in folder.iterdir()},
                    "readme": (folder / "README.md").read_text(),
                    **kwargs,
                },
            )
        )
        url = f"https://huggingface.co/{repo_id}/commit/0123abc"
        return CommitInfo(commit_url=url, commit_message="m", commit_description="", oid="0123abc")


@pytest.fixture
def fake_hub(monkeypatch):
    FakeHfApi.calls = []
    monkeypatch.setattr(hub, "HfApi", FakeHfApi)
    return FakeHfApi.calls


def test_push_folder(fake_hub, tiny_simclr_config, tmp_path):
    out = export_backbone(_checkpoint(tiny_simclr_config, tmp_path / "ckpt"), tmp_path / "export")
    url = hub.push_folder(out, "simclr-atto", token="hf_x", private=True)

    assert [name for name, _ in fake_hub] == ["init", "create_repo", "upload_folder"]
    assert fake_hub[0][1]["token"] == "hf_x"
    create, upload = fake_hub[1][1], fake_hub[2][1]
    assert create["repo_id"] == "simclr-atto" and create["private"] is True and create["exist_ok"] is True
    assert upload["repo_id"] == "me/simclr-atto"
    assert upload["folder_path"] == out and upload["files"] == EXPORT_FILES
    assert 'timm.create_model("hf-hub:me/simclr-atto"' in upload["readme"]
    assert hub.REPO_ID_PLACEHOLDER not in (out / "README.md").read_text()
    assert url == "https://huggingface.co/me/simclr-atto/commit/0123abc"


@pytest.mark.slow
def test_cli_export(tiny_simclr_config, tmp_path, capsys):
    model_dir = _checkpoint(tiny_simclr_config, tmp_path / "ckpt")
    (tmp_path / "eval.json").write_text(json.dumps(EVAL_RESULTS))
    main(["export", str(model_dir), str(tmp_path / "export"), "--eval_file", str(tmp_path / "eval.json")])
    out = tmp_path / "export"
    assert {p.name for p in out.iterdir()} == EXPORT_FILES
    assert "61.2%" in (out / "README.md").read_text()
    assert f"exported to {out}" in capsys.readouterr().out


@pytest.mark.slow
def test_cli_export_and_push(fake_hub, tiny_simclr_config, tmp_path, capsys):
    model_dir = _checkpoint(tiny_simclr_config, tmp_path / "ckpt")
    main(["export", str(model_dir), str(tmp_path / "export"), "--push_to_hub", "--hub_model_id", "me/atto"])
    upload = dict(fake_hub)["upload_folder"]
    assert upload["repo_id"] == "me/atto" and upload["folder_path"] == tmp_path / "export"
    assert dict(fake_hub)["create_repo"]["private"] is False
    assert "pushed to https://huggingface.co/me/atto/commit/0123abc" in capsys.readouterr().out


def test_checkpoint_started_from_timm_weights_exports_offline(tiny_simclr_config, tmp_path):
    """A run with ``pretrained_backbone=True`` exports without fetching timm's weights (tests are offline)."""
    model_dir = _checkpoint(tiny_simclr_config, tmp_path / "ckpt")
    saved = json.loads((model_dir / "config.json").read_text())
    (model_dir / "config.json").write_text(json.dumps(saved | {"pretrained_backbone": True}))
    out = export_backbone(model_dir, tmp_path / "export")
    _, body = _card_parts((out / "README.md").read_text())
    assert _table_row(body, "initialisation") == ["timm's pretrained `convnext_atto` weights"]
    with torch.no_grad():
        x = torch.randn(2, 3, 32, 32)
        expected = SimCLRModel.from_pretrained(model_dir, pretrained_backbone=False).eval()(x).pooler_output
        exported = timm.create_model("local-dir:" + str(out), pretrained=True, num_classes=0).eval()(x)
    torch.testing.assert_close(exported, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_push_without_repository_is_refused_before_anything_is_written(tiny_simclr_config, tmp_path, capsys):
    model_dir = _checkpoint(tiny_simclr_config, tmp_path / "ckpt")
    with pytest.raises(SystemExit) as exit_info:
        main(["export", str(model_dir), str(tmp_path / "export"), "--push_to_hub"])
    assert exit_info.value.code == 2
    assert "hf-ssl: error: --push_to_hub needs --hub_model_id" in capsys.readouterr().err
    assert not (tmp_path / "export").exists()


def test_evaluate_accepts_the_export(tiny_simclr_config, tmp_path):
    """hf-ssl evaluate reads an exported timm backbone (TimmWrapper) with the same features as the checkpoint."""
    model_dir = _checkpoint(tiny_simclr_config, tmp_path / "ckpt")
    out = export_backbone(model_dir, tmp_path / "export")
    kwargs = {"train_split": "train[:60]", "split": "test[:30]", "baselines": False}
    from_export = evaluate(EvaluationArguments(model_name_or_path=str(out), **kwargs))
    from_checkpoint = evaluate(EvaluationArguments(model_name_or_path=str(model_dir), **kwargs))
    assert from_export["knn"] == from_checkpoint["knn"]
    assert from_export["linear_probe"]["accuracy"] == pytest.approx(from_checkpoint["linear_probe"]["accuracy"])


def test_pretraining_checkpoint_has_an_image_processor(tiny_simclr_config, tmp_path):
    """AutoImageProcessor and pipeline("image-feature-extraction") work on the pretraining checkpoint itself."""
    from transformers import AutoImageProcessor, pipeline

    from hf_ssl.data import ImageDataArguments, load_data
    from hf_ssl.models.simclr.objective import prepare_data

    prepared = prepare_data(load_data("digits", "test[:4]"), tiny_simclr_config, ImageDataArguments())
    model_dir = _checkpoint(tiny_simclr_config, tmp_path / "ckpt")
    prepared.processing_class.save_pretrained(model_dir)
    processor = AutoImageProcessor.from_pretrained(model_dir)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (41, 53, 3), dtype=np.uint8))
    ours = eval_transform(tiny_simclr_config.data_config)(image)
    # transformers' resize and timm's (PIL) round differently: within a few grey levels after normalisation
    torch.testing.assert_close(processor(image, return_tensors="pt").pixel_values[0], ours, atol=0.1, rtol=0)
    extractor = pipeline("image-feature-extraction", model=str(model_dir), pool=True)
    features = torch.tensor(extractor(image))
    assert features.shape[-1] == SimCLRModel.from_pretrained(model_dir).num_features


# ------------------------------------------------------------------------------- exports read the whole input


@pytest.fixture(scope="module")
def cropping_tokenizer():
    """A trained tokenizer that records the training crop (32) as model_max_length, as hf_ssl's text runs save it."""
    from hf_ssl.data.text import load_default_text, train_tokenizer

    return train_tokenizer(load_default_text("train")["text"][:2000], vocab_size=200, model_max_length=32)


def test_simcse_export_reads_sentences_longer_than_the_training_crop(cropping_tokenizer, tmp_path):
    """sentence_bert_config.json holds the encoder's own limit (RoBERTa: positions less pad_token_id + 1), so
    SentenceTransformer(path) encodes a 100-token sentence whole: the vectors of SimCSEModel on the whole sentence,
    not those of its first 32 tokens; the card states the training length."""
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel

    from hf_ssl import SimCSEConfig, SimCSEForPreTraining

    tokenizer = cropping_tokenizer
    encoder = {"model_type": "roberta", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2}
    encoder |= {"intermediate_size": 64, "max_position_embeddings": 200, "vocab_size": len(tokenizer)}
    encoder |= {"pad_token_id": tokenizer.pad_token_id}
    torch.manual_seed(0)
    model = SimCSEForPreTraining(SimCSEConfig(encoder=encoder, pooler_type="mean"))
    _perturb_(model)
    model.save_pretrained(tmp_path / "run")
    tokenizer.save_pretrained(tmp_path / "run")
    out = export_backbone(tmp_path / "run", tmp_path / "export")

    limit = 200 - (tokenizer.pad_token_id + 1)
    assert json.loads((out / "sentence_bert_config.json").read_text())["max_seq_length"] == limit
    sentence = " ".join(load_default_text_rows(30))
    ids = tokenizer(sentence)["input_ids"]
    assert 32 < len(ids) <= limit, len(ids)
    crop = tokenizer.decode(tokenizer(sentence, truncation=True, max_length=32)["input_ids"], skip_special_tokens=True)

    st_model = SentenceTransformer(str(out), device="cpu")
    assert st_model.max_seq_length == limit
    whole, cut = (torch.from_numpy(st_model.encode([text])) for text in (sentence, crop))
    with torch.no_grad():
        ours = AutoModel.from_pretrained(tmp_path / "run").eval()(**tokenizer([sentence], return_tensors="pt"))
    torch.testing.assert_close(whole, ours.pooler_output, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(whole, cut, atol=1e-3)

    card = (out / "README.md").read_text()
    assert f"**Maximum Sequence Length:** {limit} tokens" in card
    assert "pretrained on sentences cut to 32 tokens" in card and "at most 32 tokens" in card


def load_default_text_rows(words: int) -> list[str]:
    """The first ``words`` words of the embedded corpus."""
    from hf_ssl.data.text import load_default_text

    return " ".join(load_default_text("train[:50]")["text"]).split()[:words]


def test_mlm_export_tokenizer_truncates_at_the_encoders_limit_not_the_training_crop(cropping_tokenizer, tmp_path):
    from transformers import AutoTokenizer

    from hf_ssl import MLMConfig, MLMForPreTraining

    encoder = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64}
    model = MLMForPreTraining(
        MLMConfig(encoder={**encoder, "vocab_size": len(cropping_tokenizer), "max_position_embeddings": 96})
    )
    model.save_pretrained(tmp_path / "run")
    cropping_tokenizer.save_pretrained(tmp_path / "run")
    out = export_backbone(tmp_path / "run", tmp_path / "export")
    exported = AutoTokenizer.from_pretrained(out)
    assert exported.model_max_length == 96
    long_text = " ".join(load_default_text_rows(80))
    assert len(exported(long_text, truncation=True)["input_ids"]) > 32
    card = (out / "README.md").read_text()
    assert (
        "at most 32 tokens in pretraining; the encoder reads up to 96, where the exported tokenizer truncates" in card
    )


@pytest.mark.parametrize("backbone", ["convnext_atto", "vit_tiny_patch16_224"])
def test_image_export_card_says_which_input_sizes_the_model_accepts(backbone, tmp_path):
    """A CNN reads other sizes than its pretraining resolution (the card says so); a ViT's fixed position grid does
    not (the card says that), exactly as the exported timm model behaves."""
    config = SimCLRConfig(
        backbone=backbone, small_image_stem=True, image_size=32, projection_hidden_dim=32, projection_dim=16
    )
    out = export_backbone(_checkpoint(config, tmp_path / "ckpt"), tmp_path / "export")
    card = (out / "README.md").read_text()
    exported = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    with torch.no_grad():
        try:
            exported(torch.randn(1, 3, 64, 64))
            accepts_other_sizes = True
        except (AssertionError, RuntimeError):
            accepts_other_sizes = False
    assert accepts_other_sizes == (backbone == "convnext_atto")
    assert ("the model also accepts other sizes" in card) == accepts_other_sizes
    assert ("the only size the model accepts" in card) == (not accepts_other_sizes)


def test_an_export_reads_the_checkpoints_config_once_and_maps_the_mlm_head_once(
    cropping_tokenizer, tiny_simclr_config, tmp_path, monkeypatch
):
    from transformers import PretrainedConfig

    from hf_ssl import MLMConfig, MLMForPreTraining

    encoder = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64}
    mlm = MLMForPreTraining(MLMConfig(encoder={**encoder, "vocab_size": len(cropping_tokenizer)}))
    mlm.save_pretrained(tmp_path / "mlm")
    cropping_tokenizer.save_pretrained(tmp_path / "mlm")
    reads, mappings = [], []
    read_config = PretrainedConfig.get_config_dict.__func__
    to_masked_lm = MLMForPreTraining.to_masked_lm

    def counted_read(cls, path, *args, **kwargs):
        reads.append(Path(path).name)
        return read_config(cls, path, *args, **kwargs)

    def counted_mapping(self):
        mappings.append(1)
        return to_masked_lm(self)

    monkeypatch.setattr(PretrainedConfig, "get_config_dict", classmethod(counted_read))
    monkeypatch.setattr(MLMForPreTraining, "to_masked_lm", counted_mapping)
    for name in ("simclr", "mlm"):
        if name == "simclr":
            _checkpoint(tiny_simclr_config, tmp_path / name)
        reads.clear()
        export_backbone(tmp_path / name, tmp_path / f"{name}_export")
        assert reads.count(name) == 1, (name, reads)
    assert len(mappings) == 1


def test_a_text_checkpoint_missing_weights_is_refused(tmp_path):
    from hf_ssl import MLMConfig, MLMForPreTraining

    encoder = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64}
    MLMForPreTraining(MLMConfig(encoder={**encoder, "vocab_size": 100})).save_pretrained(tmp_path / "run")
    weights = load_file(tmp_path / "run" / "model.safetensors")
    dropped = next(key for key in weights if "encoder.layer.0.output.dense" in key)
    save_file({k: v for k, v in weights.items() if k != dropped}, tmp_path / "run" / "model.safetensors")
    with pytest.raises(UsageError, match=r"run: 1 weights are missing \(.*output\.dense"):
        export_backbone(tmp_path / "run", tmp_path / "export")
    assert not (tmp_path / "export" / "README.md").exists()
