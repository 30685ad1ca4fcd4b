"""scripts/mae_mask_ratio.py: one command pretrains at each mask ratio on the same data and budget, and tabulates."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from test_recipes import load_script
from transformers import AutoConfig

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "mae_mask_ratio.py"


def test_mask_ratio_recipe_runs_each_ratio_with_the_same_budget(tmp_path, capsys):
    config = tmp_path / "tiny.yaml"
    config.write_text(
        yaml.safe_dump(
            dict(image_size=32, patch_size=4, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                 intermediate_size=64, decoder_hidden_size=16, decoder_num_hidden_layers=1,
                 decoder_num_attention_heads=2, decoder_intermediate_size=32, per_device_train_batch_size=16,
                 logging_steps=1, max_steps=50, report_to="none")
        )
    )  # fmt: skip
    out = tmp_path / "ratios"
    rows = load_script(SCRIPT).main(
        ["--config", str(config), "--ratios", "0.5", "0.9", "--max_steps", "2", "--eval_train_split", "train[:200]",
         "--eval_split", "test[:50]", "--output_dir", str(out), "--", "--learning_rate", "1e-3"]
    )  # fmt: skip
    assert [row["mask_ratio"] for row in rows] == [0.5, 0.9]
    for row, ratio in zip(rows, (0.5, 0.9), strict=True):
        run = out / f"ratio-{ratio:g}"
        saved = AutoConfig.from_pretrained(run)
        assert saved.mask_ratio == ratio and saved.hidden_size == 32  # everything but the ratio from the config
        info = json.loads((run / "hf_ssl_run.json").read_text())
        assert info["global_step"] == 2 == row["steps"]  # --max_steps overrides the config's 50
        assert info["training_args"]["learning_rate"] == 1e-3  # flags after -- reach hf-ssl pretrain
        assert row["final_train_loss"] == [e["loss"] for e in info["log_history"] if "loss" in e][-1]
        assert 0 <= row["linear_probe"]["accuracy"] <= 1 and row["test_reconstruction_loss"] > 0
    results = json.loads((out / "results.json").read_text())
    assert set(results["baselines"]) == {"random_init", "raw_pixels"}  # evaluated once, with the first ratio
    table = capsys.readouterr().out
    assert "mask ratio" in table and "linear probe" in table and "raw pixels" in table
    assert (out / "results.txt").read_text().strip() in table
