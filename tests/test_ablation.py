"""scripts/simclr_augmentation_ablation.py: one command pretrains SimCLR with each augmentation removed in turn at the
same budget, evaluates each, and prints a Markdown table."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from test_recipes import load_script
from transformers import AutoConfig

from hf_ssl import SimCLRConfig
from hf_ssl.models.simclr.configuration_simclr import AUGMENTATIONS

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "simclr_augmentation_ablation.py"


def test_each_config_value_that_removes_an_augmentation_removes_exactly_it():
    full = SimCLRConfig(blur_prob=0.5)
    assert full.augmentations == tuple(AUGMENTATIONS)
    for name, values in AUGMENTATIONS.items():
        assert SimCLRConfig(**{"blur_prob": 0.5, **values}).augmentations == tuple(
            a for a in AUGMENTATIONS if a != name
        )
    assert "color_jitter" not in SimCLRConfig(color_jitter_strength=0.0).augmentations  # no-op jitter is off too


def test_ablation_runs_every_removal_at_the_same_budget_and_tabulates(tmp_path, capsys):
    config = tmp_path / "tiny.yaml"
    config.write_text(
        yaml.safe_dump(
            dict(dataset_name="digit-scenes", backbone="convnext_atto", small_image_stem=True, image_size=32,
                 projection_hidden_dim=32, projection_dim=16, per_device_train_batch_size=8, max_steps=50,
                 logging_steps=1, report_to="none", dataloader_num_workers=0)
        )
    )  # fmt: skip
    out = tmp_path / "ablation"
    rows = load_script(SCRIPT).main(
        ["--config", str(config), "--max_steps", "2", "--eval_train_split", "train[:100]", "--eval_split",
         "test[:40]", "--probe_max_iter", "50", "--output_dir", str(out), "--", "--learning_rate", "1e-3"]
    )  # fmt: skip
    assert [row["run"] for row in rows] == ["full", *(f"no {name}" for name in AUGMENTATIONS)]
    for row in rows:
        run = out / row["run"].replace(" ", "-")
        saved = AutoConfig.from_pretrained(run)
        info = json.loads((run / "hf_ssl_run.json").read_text())
        assert info["global_step"] == 2  # --max_steps overrides the config's 50
        assert info["training_args"]["learning_rate"] == 1e-3  # flags after -- reach hf-ssl pretrain
        assert saved.projection_dim == 16  # everything else from the config
        removed = row["run"].removeprefix("no ")
        expected = [a for a in AUGMENTATIONS if a != removed]  # the full run removes nothing
        assert list(saved.augmentations) == expected == row["augmentations"]
        if removed in AUGMENTATIONS:
            for key, value in AUGMENTATIONS[removed].items():
                assert getattr(saved, key) == value  # the saved config really lacks it
    printed = capsys.readouterr().out
    table = (out / "results.md").read_text().strip()
    assert table in printed
    lines = table.splitlines()
    assert lines[0].startswith("| run | augmentations |") and set(lines[1]) <= {"|", "-"}
    body = {line.split("|")[1].strip(): line for line in lines[2:]}
    assert set(body) == {row["run"] for row in rows} | {"random init", "raw pixels"}
    for line in body.values():
        accuracies = [float(x) for x in re.findall(r"(\d+(?:\.\d+)?)%", line)]
        assert len(accuracies) == 2 and all(0 <= a <= 100 for a in accuracies), line


def test_ablation_refuses_an_unknown_augmentation(capsys):
    with pytest.raises(SystemExit) as exit_info:
        load_script(SCRIPT).main(["--remove", "mixup"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'mixup'" in capsys.readouterr().err
