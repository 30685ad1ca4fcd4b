"""The package's shape: its public names come from the objective registry (each registered objective's config,
pretraining model and backbone model, which registering also makes transformers Auto classes), and the test suite's
quick loop leaves out what starts processes or the whole CLI."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest
import tomllib
from transformers import AutoConfig, AutoModel, AutoModelForPreTraining, PretrainedConfig, PreTrainedModel

import hf_ssl
from hf_ssl.evaluation.features import FEATURE_SPECS
from hf_ssl.objectives import OBJECTIVES, register_objective


def test_every_registered_objective_is_re_exported():
    from hf_ssl import SimCLRConfig, Wav2VecModel

    assert SimCLRConfig is OBJECTIVES["simclr"].config_class
    assert Wav2VecModel is OBJECTIVES["wav2vec"].base_model_class
    expected = {"UsageError", "__version__"}
    for objective in OBJECTIVES.values():
        classes = (objective.config_class, objective.model_class, objective.base_model_class)
        expected |= {cls.__name__ for cls in classes}
        assert AutoModel._model_mapping[objective.config_class] is objective.base_model_class
        assert AutoModelForPreTraining._model_mapping[objective.config_class] is objective.model_class
    assert {"MAEConfig", "MLMForPreTraining", "SimCSEModel"} <= expected
    assert set(hf_ssl.__all__) == expected and expected <= set(dir(hf_ssl))
    with pytest.raises(AttributeError, match="no attribute 'NoSuchConfig'"):
        hf_ssl.NoSuchConfig  # noqa: B018


class PackageTestConfig(PretrainedConfig):
    model_type = "hf_ssl_test_package"


class PackageTestModel(PreTrainedModel):
    config_class = PackageTestConfig


class PackageTestForPreTraining(PreTrainedModel):
    config_class = PackageTestConfig


def test_a_newly_registered_objective_appears_in_the_package_and_the_auto_classes(tmp_path):
    objective = dataclasses.replace(
        OBJECTIVES["simclr"],
        name="package-test",
        config_class=PackageTestConfig,
        model_class=PackageTestForPreTraining,
        base_model_class=PackageTestModel,
        commands={},
        exporter=None,
    )
    assert "PackageTestConfig" not in hf_ssl.__all__
    register_objective(objective)
    try:
        assert {"PackageTestConfig", "PackageTestForPreTraining", "PackageTestModel"} <= set(hf_ssl.__all__)
        assert hf_ssl.PackageTestModel is PackageTestModel
        PackageTestConfig().save_pretrained(tmp_path)
        assert isinstance(AutoConfig.from_pretrained(tmp_path), PackageTestConfig)
        assert AutoModel._model_mapping[PackageTestConfig] is PackageTestModel
    finally:
        OBJECTIVES.pop("package-test")
        FEATURE_SPECS.pop(PackageTestConfig.model_type)
    assert "PackageTestConfig" not in hf_ssl.__all__


def _starts_processes_or_the_cli(function: ast.FunctionDef) -> bool:
    for node in ast.walk(function):
        if isinstance(node, ast.Call):
            called = node.func
            if isinstance(called, ast.Name) and called.id == "main":
                return True
            if isinstance(called, ast.Attribute) and isinstance(called.value, ast.Name):
                if called.value.id == "subprocess":
                    return True
    return False


def test_tests_that_start_processes_or_the_cli_are_marked_slow():
    """``pytest -m "not slow"`` is the quick loop: a test that calls the CLI's ``main`` or starts a subprocess
    carries the ``slow`` marker (its own, or its module's ``pytestmark``), registered in pyproject.toml."""
    root = Path(__file__).resolve().parent
    assert any(marker.startswith("slow:") for marker in _pytest_config()["markers"])
    unmarked = []
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text())
        if "pytestmark = pytest.mark.slow" in path.read_text():
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_"):
                marked = any("slow" in ast.unparse(decorator) for decorator in node.decorator_list)
                if not marked and _starts_processes_or_the_cli(node):
                    unmarked.append(f"{path.relative_to(root)}::{node.name}")
    assert not unmarked, unmarked


def _pytest_config() -> dict:
    return tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["tool"]["pytest"][
        "ini_options"
    ]
