"""Every recipe under scripts/configs/ runs as written from a fresh clone with the data in ../shared/data.

Each config is run with ``hf-ssl pretrain <objective> --config <file>`` (the objective is the file name's prefix) and
flags after it that make the run tiny: one optimisation step, a slice of each source, a small network. The data,
paths and every other key stay the recipe's own. A recipe that starts from another's output (SimCSE from the MLM
run) gets that recipe's tiny run; a dataset a shipped script builds (STS-B pairs) is built by that script.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from hf_ssl.cli import main
from hf_ssl.objectives import OBJECTIVES

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "scripts" / "configs").glob("*.yaml"))
SHARED = "../shared/data/"
SHARED_DATA = ROOT.parent / "shared" / "data"
BUILD_STSB = ROOT / "scripts" / "build_stsb_pairs.py"

# flags after --config, per objective: every run takes one step of a few examples
COMMON = [
    "--max_steps", "1", "--per_device_train_batch_size", "8", "--logging_steps", "1", "--report_to", "none",
    "--disable_tqdm", "true", "--dataloader_num_workers", "0", "--seed", "0",
]  # fmt: skip
TINY = {
    "simclr": ["--train_split", "train[:16]", "--projection_hidden_dim", "32", "--projection_dim", "16"],
    "mae": [
        "--train_split", "train[:16]", "--hidden_size", "32", "--num_hidden_layers", "1", "--num_attention_heads", "2",
        "--intermediate_size", "64", "--decoder_hidden_size", "16", "--decoder_num_hidden_layers", "1",
        "--decoder_num_attention_heads", "2", "--decoder_intermediate_size", "32",
    ],
    "mlm": ["--train_split", "train[:100]", "--vocab_size", "500", "--per_device_train_batch_size", "4"],
    "data2vec_text": [
        "--train_split", "train[:100]", "--vocab_size", "500", "--per_device_train_batch_size", "4",
        "--average_top_k_layers", "1",
    ],
    "simcse": ["--train_split", "train[:200]"],
    "dino": [
        "--train_split", "train[:16]", "--out_dim", "64", "--head_hidden_dim", "32", "--head_bottleneck_dim", "16",
    ],
    "data2vec_audio": [
        "--train_split", "train[:8]", "--per_device_train_batch_size", "4", "--average_top_k_layers", "1",
    ],
    "wav2vec": [
        "--train_split", "train[:8]", "--per_device_train_batch_size", "4", "--num_codevectors_per_group", "8",
        "--codevector_dim", "16", "--proj_codevector_dim", "16", "--num_negatives", "3",
    ],
}  # fmt: skip
# the recipe's own network description (a JSON string or a YAML mapping), made small: only the sizes change
TINY_NETWORK = {
    "mlm": ("encoder", {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64}),
    "data2vec_text": (
        "encoder",
        {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64},
    ),
    "data2vec_audio": (
        "backbone",
        {
            "hidden_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "intermediate_size": 64,
            "num_conv_pos_embeddings": 2,
            "num_conv_pos_embedding_groups": 4,
        },
    ),
    "wav2vec": (
        "backbone",
        {
            "hidden_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "intermediate_size": 64,
            "num_conv_pos_embeddings": 16,
            "num_conv_pos_embedding_groups": 4,
        },
    ),
}
PATH_KEYS = ("dataset_name", "model_name_or_path", "sts_eval_dataset", "tokenizer_name")


def load_script(path: Path) -> Any:
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def read(config: Path) -> dict[str, Any]:
    return yaml.safe_load(config.read_text())


def objective_of(config: Path) -> str:
    names = [name for name in OBJECTIVES if config.stem.startswith(f"{name}_")]  # data2vec_text_x: data2vec_text
    assert names, f"{config.name}: its name must start with an objective and _ ({', '.join(OBJECTIVES)})"
    return max(names, key=len)


def as_list(value: Any) -> list[str]:
    if value is None:
        return []
    return [str(v) for v in value] if isinstance(value, list) else [str(value)]


def tiny_network(objective: str, values: dict[str, Any]) -> list[str]:
    if objective not in TINY_NETWORK or TINY_NETWORK[objective][0] not in values:
        return []
    key, sizes = TINY_NETWORK[objective]
    network = values[key]
    network = dict(json.loads(network) if isinstance(network, str) else network, **sizes)
    if "conv_dim" in network:
        network["conv_dim"] = [16] * len(network["conv_dim"])
    return [f"--{key}", json.dumps(network)]


class Recipes:
    """Runs recipes tiny, each once, the recipes they start from first."""

    def __init__(self, root: Path):
        self.root = root
        self.outputs = {read(config)["output_dir"]: config for config in CONFIGS}
        stsb = load_script(BUILD_STSB)  # the data files shipped scripts write (from ../shared/data), by default path
        self.builds = {stsb.DEFAULT_OUTPUT: lambda out: stsb.main(["--output", str(out)])}
        self.done: dict[Path, Path] = {}

    def run(self, config: Path) -> Path:
        if config in self.done:
            return self.done[config]
        values = read(config)
        objective = objective_of(config)
        shared = [v for key in PATH_KEYS for v in as_list(values.get(key)) if v.startswith(SHARED) or v in self.builds]
        if shared and not SHARED_DATA.is_dir():
            made = " (built from ../shared/data by a script)" if shared[0] in self.builds else ""
            pytest.skip(f"{config.name} reads {shared[0]}{made}: real data not available ({SHARED_DATA} is absent)")
        out = self.root / config.stem
        argv = ["pretrain", objective, "--config", str(config), *COMMON, *TINY[objective]]
        argv += tiny_network(objective, values)
        argv += [arg for key in ("save_steps", "eval_steps") if key in values for arg in (f"--{key}", "1")]
        start = values.get("model_name_or_path")
        if start in self.outputs:  # a recipe that starts from another one's output
            argv += ["--model_name_or_path", str(self.run(self.outputs[start]))]
        argv += ["--output_dir", str(out)]
        with contextlib.chdir(ROOT):  # the recipes' paths are relative to the project root
            for name in as_list(values.get("dataset_name")):
                if name in self.builds:  # data a shipped script writes: written here instead of into runs/
                    built = self.root / "built" / Path(name).name
                    self.builds[name](built)
                    argv += ["--dataset_name", str(built)]
            try:
                main(argv)
            except SystemExit as exit_info:
                pytest.fail(f"hf-ssl {' '.join(argv)} exited with status {exit_info.code}")
        self.done[config] = out
        return out


@pytest.fixture(scope="module")
def recipes(tmp_path_factory) -> Recipes:
    return Recipes(tmp_path_factory.mktemp("recipes"))


@pytest.mark.parametrize("config", CONFIGS, ids=lambda config: config.stem)
def test_recipe_starts_and_saves_a_model(config, recipes):
    out = recipes.run(config)
    assert (out / "model.safetensors").is_file() and (out / "config.json").is_file()
    info = json.loads((out / "hf_ssl_run.json").read_text())
    assert info["objective"] == objective_of(config) and info["global_step"] == 1
    sources = as_list(read(config).get("dataset_name"))
    if sources and not set(sources) & set(recipes.builds):  # the recipe's own data, every source of it
        assert info["dataset_name"] == ",".join(sources)
        if len(sources) > 1:
            assert info["dataset_source"].startswith(f"{len(sources)} sources concatenated: local ")
    if read(config).get("eval_strategy") == "steps":  # the recipe's evaluation during training ran too
        assert any(key.startswith("eval_") for entry in info["log_history"] for key in entry)


def test_recipes_read_only_the_project_shared_data_and_earlier_recipes():
    """A recipe names no path that exists on one machine only: its data is in ../shared/data, embedded, or written
    by a shipped script or an earlier recipe (whose output_dir it names)."""
    outputs = {read(config)["output_dir"]: config.name for config in CONFIGS}
    built = {load_script(BUILD_STSB).DEFAULT_OUTPUT: BUILD_STSB.name}
    made = outputs | built
    for config in CONFIGS:
        text = config.read_text()
        assert not re.search(r"(^|[\s'\"(])(/tmp|/work|/home|~)/", text, flags=re.M), f"{config.name}: {text}"
        values = read(config)
        assert values["output_dir"].startswith("runs/")
        for key in PATH_KEYS:
            for value in as_list(values.get(key)):
                if "/" in value:
                    assert value.startswith(SHARED) or value in made, f"{config.name}: {key} {value}"
                if value in made:  # the config's comment names the recipe or script that makes it
                    assert made[value] in text, f"{config.name}: say how {value} is made ({made[value]})"
