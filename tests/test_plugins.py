"""Objectives are plugins: one defined entirely here is trained, evaluated and exported through the CLI, and the
shared code keeps its dependency shape (no import cycles, export never imports models, every package installed)."""

from __future__ import annotations

import ast
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import tomllib
import torch
from safetensors.torch import save_file
from torch import nn
from transformers import AutoConfig, AutoModel, AutoModelForPreTraining, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.utils import ModelOutput

from hf_ssl.backbones.timm import data_config
from hf_ssl.cli import main
from hf_ssl.data import find_column, prepare_images, to_pil
from hf_ssl.errors import check_range
from hf_ssl.evaluation.features import FEATURE_SPECS, FeatureSpec
from hf_ssl.export import EXPORTERS, ExportContext, Exporter
from hf_ssl.objectives import OBJECTIVES, Objective, PreparedData, register_objective

ROOT = Path(__file__).resolve().parents[1]

# ---------------------------------------------------------------------------------------------- a toy objective


class ToyConfig(PretrainedConfig):
    """A denoising autoencoder of tiny grey images.

    Args:
        image_size: side of the square input.
        hidden_size: width of the code.
        noise_scale: std of the Gaussian noise added to the input.
    """

    model_type = "hf_ssl_test_toy"

    def __init__(self, image_size: int = 8, hidden_size: int = 16, noise_scale: float = 0.1, **kwargs: Any):
        check_range("noise_scale", noise_scale, 0)
        self.image_size, self.hidden_size, self.noise_scale = image_size, hidden_size, noise_scale
        super().__init__(**kwargs)

    @property
    def data_config(self) -> dict[str, Any]:
        return data_config(self.image_size, 1, [0.5], [0.5])


@dataclass
class ToyOutput(ModelOutput):
    loss: torch.Tensor | None = None
    code_norm: torch.Tensor | None = None


class ToyPreTrainedModel(PreTrainedModel):
    config_class = ToyConfig
    base_model_prefix = "toy"
    main_input_name = "pixel_values"


class ToyModel(ToyPreTrainedModel):
    def __init__(self, config: ToyConfig):
        super().__init__(config)
        self.encoder = nn.Linear(config.image_size**2, config.hidden_size)
        self.post_init()

    def forward(self, pixel_values: torch.Tensor, **kwargs: Any) -> BaseModelOutputWithPooling:
        code = self.encoder(pixel_values.flatten(1))
        return BaseModelOutputWithPooling(last_hidden_state=code[:, None], pooler_output=code)


class ToyForPreTraining(ToyPreTrainedModel):
    def __init__(self, config: ToyConfig):
        super().__init__(config)
        self.toy = ToyModel(config)
        self.decoder = nn.Linear(config.hidden_size, config.image_size**2)
        self.post_init()

    def forward(self, pixel_values: torch.Tensor, noise: torch.Tensor, **kwargs: Any) -> ToyOutput:
        code = self.toy(pixel_values + self.config.noise_scale * noise).pooler_output
        loss = (self.decoder(code) - pixel_values.flatten(1)).pow(2).mean()
        return ToyOutput(loss=loss, code_norm=code.detach().norm(dim=1).mean())


@dataclass
class ToyDataArguments:
    toy_column: str | None = field(default=None, metadata={"help": "The image column."})


class ToyCollator:
    def __init__(self, column: str, size: int):
        self.column, self.size = column, size

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        images = [to_pil(row[self.column], "L").resize((self.size, self.size)) for row in rows]
        pixels = torch.stack([torch.tensor(list(image.getdata()), dtype=torch.float32) for image in images])
        pixels = (pixels / 255 - 0.5) / 0.5
        pixels = pixels.view(-1, 1, self.size, self.size)
        return {"pixel_values": pixels, "noise": torch.randn_like(pixels)}


def _prepare(ds, config: ToyConfig, args: ToyDataArguments) -> PreparedData:
    column = find_column(ds, "image", args.toy_column)
    ds, skipped = prepare_images(ds, column)
    return PreparedData(ds, ToyCollator(column, config.image_size), {"image": column}, skipped)


def _export(context: ExportContext) -> None:
    model = ToyModel.from_pretrained(context.model_dir)
    save_file(model.state_dict(), context.output_dir / "toy.safetensors")
    (context.output_dir / "README.md").write_text(f"# toy\n\nsteps: {context.run_info.global_step}\n")


TOY = Objective(
    name="toy",
    config_class=ToyConfig,
    model_class=ToyForPreTraining,
    modality="image",
    data_arguments=ToyDataArguments,
    prepare_data=_prepare,
    features=FeatureSpec("image", description="the toy code"),
    exporter=Exporter(_export, ("toy.safetensors", "README.md")),
    summary="a test objective",
)


@pytest.fixture
def toy_objective():
    AutoConfig.register(ToyConfig.model_type, ToyConfig, exist_ok=True)
    AutoModel.register(ToyConfig, ToyModel, exist_ok=True)
    AutoModelForPreTraining.register(ToyConfig, ToyForPreTraining, exist_ok=True)
    register_objective(TOY)
    yield TOY
    OBJECTIVES.pop("toy")
    FEATURE_SPECS.pop(ToyConfig.model_type)
    EXPORTERS.pop(ToyConfig.model_type)


def test_an_objective_defined_outside_the_package_runs_through_the_cli(toy_objective, tmp_path, capsys):
    run, export = tmp_path / "run", tmp_path / "export"
    main(["pretrain", "toy", "--hidden_size", "8", "--noise_scale", "0.2", "--max_steps", "3", "--logging_steps", "1"]
         + ["--per_device_train_batch_size", "16", "--output_dir", str(run), "--save_strategy", "no",
            "--disable_tqdm", "true", "--report_to", "none"])  # fmt: skip
    info = json.loads((run / "hf_ssl_run.json").read_text())
    assert info["objective"] == "toy" and info["global_step"] == 3
    assert all("code_norm" in entry for entry in info["log_history"] if "loss" in entry)  # its scalars are logged
    assert AutoConfig.from_pretrained(run).hidden_size == 8

    main(["evaluate", "--model_name_or_path", str(run), "--train_split", "train[:100]", "--split", "test[:50]",
          "--output_file", str(run / "eval_results.json")])  # fmt: skip
    results = json.loads((run / "eval_results.json").read_text())
    assert results["features"] == "the toy code" and results["num_features"] == 8
    assert set(results["baselines"]) == {"random_init", "raw_pixels"}
    assert "raw pixels" in capsys.readouterr().out

    main(["export", str(run), str(export)])
    assert {p.name for p in export.iterdir()} == {"toy.safetensors", "README.md"}
    assert "steps: 3" in (export / "README.md").read_text()


# ---------------------------------------------------------------------------------------------- code shape


def _imports(path: Path, package: str) -> set[str]:
    """The hf_ssl modules ``path`` imports anywhere, at module level or inside a function (``from hf_ssl.x import y``
    -> ``hf_ssl.x`` or ``hf_ssl.x.y`` when that is a module): a function-level import is still an arrow."""
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and node.module.startswith("hf_ssl"):
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("hf_ssl"))
    return found


def _module_graph() -> dict[str, set[str]]:
    modules = {}
    for path in (ROOT / "hf_ssl").rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    return {name: {m for m in _imports(path, name) if m in modules and m != name} for name, path in modules.items()}


def test_module_imports_have_no_cycles():
    graph = _module_graph()
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join([*trail[trail.index(nxt) :], nxt]))
            if nxt not in state:
                visit(nxt, [*trail, nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])


@pytest.mark.parametrize("package", ["hf_ssl.export", "hf_ssl.evaluation", "hf_ssl.data", "hf_ssl.backbones"])
def test_shared_packages_never_import_objectives_or_the_cli(package):
    graph = _module_graph()
    for module, imported in graph.items():
        if module == package or module.startswith(package + "."):
            bad = {m for m in imported if m.startswith(("hf_ssl.models", "hf_ssl.objectives", "hf_ssl.cli"))}
            assert not bad, f"{module} imports {bad}"


def test_evaluation_never_imports_export():
    """Dependencies point down: export writes model cards from evaluation results, so evaluation must not import
    export (what both read, e.g. a sentence-transformers folder's pooling, lives in ``hf_ssl.backbones``)."""
    graph = _module_graph()
    for module, imported in graph.items():
        if module.startswith("hf_ssl.evaluation"):
            bad = {m for m in imported if m == "hf_ssl.export" or m.startswith("hf_ssl.export.")}
            assert not bad, f"{module} imports {bad}"


def test_the_import_scan_sees_function_level_imports(tmp_path):
    source = tmp_path / "mod.py"
    source.write_text("def f():\n    from hf_ssl.export import model_card\n    import hf_ssl.cli\n")
    assert {"hf_ssl.export", "hf_ssl.export.model_card", "hf_ssl.cli"} <= _imports(source, "mod")


def test_every_package_is_installed():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(path.parent.relative_to(ROOT).parts) for path in (ROOT / "hf_ssl").rglob("__init__.py")} | {
        "hf_ssl.model_cards"
    }
    assert found == listed
