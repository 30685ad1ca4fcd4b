"""Mixed precision: the fp32 islands of the losses under bf16 autocast, and ``--bf16`` / ``--fp16`` on the command line.

The shared per-objective check (one bf16 step against the fp32 step) is ``test_bf16_autocast_step_matches_fp32`` in
``tests/models/common.py``. The checks here are sharper: given the same fp32 inputs, each fragile computation gives
the same result inside ``torch.autocast`` as outside it, which fails as soon as one of its fp32 islands is removed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from hf_ssl import MAEConfig, MAEForPreTraining
from hf_ssl.cli import main
from hf_ssl.models.simclr.loss import nt_xent_loss
from hf_ssl.models.simcse.loss import info_nce_loss
from hf_ssl.models.wav2vec.loss import wav2vec_contrastive_loss
from hf_ssl.models.wav2vec.masking import sample_negative_indices
from hf_ssl.models.wav2vec.modeling_wav2vec import Wav2VecGumbelQuantizer
from hf_ssl.trainer import cpu_has_native_bf16

HF_SSL = str(Path(sys.executable).parent / "hf-ssl")
MAE_FLAGS = [
    "--image_size", "32", "--patch_size", "4", "--hidden_size", "32", "--num_hidden_layers", "2",
    "--num_attention_heads", "2", "--intermediate_size", "64", "--decoder_hidden_size", "16",
    "--decoder_num_hidden_layers", "1", "--decoder_num_attention_heads", "2", "--decoder_intermediate_size", "32",
    "--per_device_train_batch_size", "8", "--save_strategy", "no", "--disable_tqdm", "true", "--report_to", "none",
    "--logging_steps", "1",
]  # fmt: skip


def bf16_autocast() -> torch.autocast:
    return torch.autocast("cpu", dtype=torch.bfloat16)


def _pairs(n: int = 16, dim: int = 64) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Anchors, positives correlated with them (cosine ~0.45), unrelated hard negatives: a loss neither near 0 nor
    near its chance value."""
    generator = torch.Generator().manual_seed(0)
    anchors = torch.randn(n, dim, generator=generator)
    positives = anchors + 2.0 * torch.randn(n, dim, generator=generator)
    return anchors, positives, torch.randn(n, dim, generator=generator)


def _nt_xent() -> torch.Tensor:
    anchors, positives, _ = _pairs()
    return nt_xent_loss(anchors, positives, temperature=0.1, gather_distributed=False)


def _info_nce() -> torch.Tensor:
    anchors, positives, negatives = _pairs()
    return info_nce_loss(
        anchors, positives, negatives, temperature=0.05, hard_negative_weight=2.0, gather_distributed=False
    )


def _wav2vec_contrastive() -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    targets = torch.randn(2, 40, 32, generator=generator)
    predicted = targets + 2.0 * torch.randn(2, 40, 32, generator=generator)
    mask = torch.rand(2, 40, generator=generator) < 0.6
    negatives = sample_negative_indices(mask, 10, generator=generator)
    loss, _ = wav2vec_contrastive_loss(predicted, targets, mask, negatives, logits_temperature=0.1)
    return loss


@pytest.mark.parametrize("loss_fn", [_nt_xent, _info_nce, _wav2vec_contrastive], ids=lambda f: f.__name__[1:])
def test_contrastive_logits_are_fp32_under_autocast(loss_fn):
    """Similarity logits divided by a small temperature lose ~1e-2 in bf16: under autocast the loss of the same
    fp32 embeddings must be the fp32 loss to fp32 precision."""
    expected = loss_fn()
    with bf16_autocast():
        got = loss_fn()
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=0.0)


def test_gumbel_quantizer_codes_and_perplexity_are_fp32_under_autocast():
    """The quantizer's logits, Gumbel softmax and perplexity are computed in fp32 under autocast: the same codes,
    the same perplexity (training, same Gumbel noise, and evaluation, argmax)."""
    torch.manual_seed(0)
    quantizer = Wav2VecGumbelQuantizer(input_dim=64, num_groups=2, num_vars=32, codevector_dim=16)
    torch.nn.init.normal_(quantizer.weight_proj.weight)  # as Wav2VecPreTrainedModel._init_weights: large logits
    torch.nn.init.uniform_(quantizer.codevectors)
    hidden = F.layer_norm(torch.randn(2, 50, 64), (64,))  # the layer-normed conv features it gets in the model
    mask = torch.rand(2, 50) < 0.5
    for training in (True, False):
        quantizer.train(training)
        torch.manual_seed(1)
        _, perplexity, codes = quantizer(hidden, mask)
        torch.manual_seed(1)
        with bf16_autocast():
            _, perplexity_bf16, codes_bf16 = quantizer(hidden, mask)
        assert perplexity_bf16.dtype == torch.float32
        torch.testing.assert_close(perplexity_bf16, perplexity)
        assert torch.equal(codes_bf16, codes)


def test_mae_reconstruction_loss_is_fp32_for_bf16_inputs():
    """The MSE, the per-patch target statistics (``norm_pix_loss``) and the count of removed patches are fp32 even
    for bf16 predictions, masks and pixels (343 removed patches: bf16 would count 344)."""
    config = MAEConfig(image_size=32, patch_size=4, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=64, decoder_hidden_size=16, decoder_num_hidden_layers=1,
                       decoder_num_attention_heads=2, decoder_intermediate_size=32, norm_pix_loss=True)  # fmt: skip
    model = MAEForPreTraining(config)
    generator = torch.Generator().manual_seed(0)
    pixels = (3.0 + torch.randn(7, 3, 32, 32, generator=generator)).bfloat16()  # a mean far from 0
    pred = torch.randn(7, 64, 48, generator=generator).bfloat16()
    mask = torch.zeros(7, 64)
    mask[:, :49] = 1.0  # 7 * 49 = 343 removed patches
    mask = mask.bfloat16()

    target = model.patchify(pixels.double())  # the reference, in float64 from the same bf16 values
    target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6) ** 0.5
    per_patch = (pred.double() - target).pow(2).mean(-1)
    expected = (per_patch * mask.double()).sum() / 343
    with bf16_autocast():
        loss = model.forward_loss(pixels, pred, mask)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss.double(), expected, rtol=1e-5, atol=0.0)


@pytest.mark.slow
def test_pretrain_with_bf16_on_the_cpu(tmp_path):
    """``hf-ssl pretrain mae --bf16`` on a machine without a GPU trains under CPU bf16 autocast (transformers alone
    refuses bf16 there), says once that emulated bf16 is slow, and saves fp32 weights."""
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}
    command = [HF_SSL, "pretrain", "mae", *MAE_FLAGS, "--bf16", "--max_steps", "1", "--output_dir", str(out)]
    run = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    warnings = [line for line in run.stderr.splitlines() if "no native bf16" in line]
    assert len(warnings) == (0 if cpu_has_native_bf16() else 1), run.stderr[-3000:]
    logged = [entry for entry in json.loads((out / "hf_ssl_run.json").read_text())["log_history"] if "loss" in entry]
    assert len(logged) == 1 and 0 < logged[0]["loss"] < float("inf")
    assert json.loads((out / "config.json").read_text())["dtype"] == "float32"
    assert {tensor.dtype for tensor in load_file(out / "model.safetensors").values()} == {torch.float32}


@pytest.mark.slow
@pytest.mark.skipif(torch.accelerator.is_available(), reason="--fp16 is valid where an accelerator exists")
def test_fp16_on_the_cpu_is_a_one_line_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["pretrain", "mae", *MAE_FLAGS, "--fp16", "--max_steps", "1", "--output_dir", str(tmp_path / "run")])
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hf-ssl: error: --fp16 is for GPUs") and "use --bf16" in lines[0]
    assert not (tmp_path / "run").exists()
