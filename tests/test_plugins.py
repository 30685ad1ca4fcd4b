"""Objectives are plugins: the README's walkthrough objective, a folder of its own outside the package, is trained,
evaluated and exported through the CLI with its own card template; the shared code keeps its dependency shape (no
import cycles, export never imports models, every package installed)."""

from __future__ import annotations

import ast
import importlib
import json
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from hf_ssl.cli import main
from hf_ssl.evaluation.features import FEATURE_SPECS
from hf_ssl.export import EXPORTERS
from hf_ssl.objectives import OBJECTIVES

ROOT = Path(__file__).resolve().parents[1]

# ---------------------------------------------------------------------------------------------- a toy objective


def walkthrough_files() -> dict[str, str]:
    """The files of the README's "Adding an objective": every code block whose first line names a ``toy_dae/`` file
    (``# toy_dae/objective.py``, ``{# toy_dae/model_card.md #}``), without that line."""
    files = {}
    for block in re.findall(r"```\w*\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S):
        first, _, rest = block.partition("\n")
        name = re.fullmatch(r"(?:# |\{# )(toy_dae/[\w.]+)(?: #\})?", first)
        if name:
            files[name.group(1)] = rest
    return files


@pytest.fixture
def toy_objective(tmp_path, monkeypatch):
    """The README's toy objective, written into a folder of its own outside the package and imported."""
    folder = tmp_path / "plugins"
    for name, text in walkthrough_files().items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    monkeypatch.syspath_prepend(str(folder))
    importlib.import_module("toy_dae")
    yield OBJECTIVES["toy"]
    model_type = OBJECTIVES.pop("toy").config_class.model_type
    FEATURE_SPECS.pop(model_type)
    EXPORTERS.pop(model_type)
    for module in [name for name in sys.modules if name.split(".")[0] == "toy_dae"]:
        del sys.modules[module]


def test_the_walkthrough_has_every_file_of_an_objective_folder():
    assert set(walkthrough_files()) == {
        f"toy_dae/{name}"
        for name in ("__init__.py", "configuration_toy.py", "modeling_toy.py", "objective.py", "model_card.md")
    }


@pytest.mark.slow
def test_an_objective_defined_outside_the_package_runs_through_the_cli(toy_objective, tmp_path, capsys):
    run, export = tmp_path / "run", tmp_path / "export"
    main(["pretrain", "toy", "--hidden_size", "8", "--noise_scale", "0.2", "--max_steps", "3", "--logging_steps", "1"]
         + ["--per_device_train_batch_size", "16", "--output_dir", str(run), "--save_strategy", "no",
            "--disable_tqdm", "true", "--report_to", "none"])  # fmt: skip
    info = json.loads((run / "hf_ssl_run.json").read_text())
    assert info["objective"] == "toy" and info["global_step"] == 3
    assert all("code_norm" in entry for entry in info["log_history"] if "loss" in entry)  # its scalars are logged
    assert json.loads((run / "config.json").read_text())["hidden_size"] == 8

    main(["evaluate", "--model_name_or_path", str(run), "--train_split", "train[:100]", "--split", "test[:50]",
          "--output_file", str(run / "eval_results.json")])  # fmt: skip
    results = json.loads((run / "eval_results.json").read_text())
    assert results["features"] == "the toy code" and results["num_features"] == 8
    assert set(results["baselines"]) == {"random_init", "raw_pixels"}
    assert "raw pixels" in capsys.readouterr().out

    main(["export", str(run), str(export)])
    assert {p.name for p in export.iterdir()} == {"config.json", "model.safetensors", "README.md"}
    card = (export / "README.md").read_text()
    assert "Gaussian noise of std 0.2" in card  # the objective's own template, from its own folder
    assert "| training length | 3 optimisation steps" in card  # the shared training rows
    assert "| toy DAE (this model) |" in card and "model-index" in card  # the shared evaluation table and metadata


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


@pytest.mark.slow
def test_every_package_is_installed(tmp_path):
    """A non-editable build (a wheel, built from a copy of the tree) holds every package of hf_ssl/, each
    objective's own card template, the shared card templates and the launcher: nothing is listed by hand."""
    source = tmp_path / "source"
    junk = shutil.ignore_patterns("__pycache__", "*.egg-info", "*.pyc")
    for name in ("hf_ssl", "model_cards"):
        shutil.copytree(ROOT / name, source / name, ignore=junk)
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy(ROOT / name, source / name)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), "."],
        cwd=source, check=True, capture_output=True,
    )  # fmt: skip
    (wheel,) = tmp_path.glob("*.whl")
    installed = set(zipfile.ZipFile(wheel).namelist())
    expected = {"hf_ssl_launcher.py"} | {
        str(path.relative_to(ROOT))
        for pattern in ("**/__init__.py", "models/*/*.md", "py.typed")
        for path in (ROOT / "hf_ssl").glob(pattern)
    }
    expected |= {f"hf_ssl/model_cards/{path.name}" for path in (ROOT / "model_cards").glob("*.[mp][dy]")}
    assert "hf_ssl/models/mae/__init__.py" in expected and expected <= installed, expected - installed
    assert not [name for name in installed if name.startswith("hf_ssl/_entry/")]  # the launcher is its own module
