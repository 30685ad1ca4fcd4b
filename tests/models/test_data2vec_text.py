"""data2vec text: the targets and loss (hand-built examples, and fairseq's target code fed the same layer outputs),
masked positions only, a teacher without gradients, the config's checks, save/load, and learning on real text."""

import math
from functools import cache

import pytest
import torch
import torch.nn.functional as F
from tiny_text import VOCAB, tokenizer
from transformers import Data2VecTextConfig, Data2VecTextModel

from hf_ssl.backbones.transformers import check_sequence_length, max_sequence_length
from hf_ssl.data.masked_text import TokenMaskingCollator
from hf_ssl.data.text import load_default_text, tokenize_dataset
from hf_ssl.errors import UsageError
from hf_ssl.losses import data2vec_targets, regression_loss
from hf_ssl.models.data2vec_text.configuration_data2vec_text import Data2VecTextPretrainingConfig
from hf_ssl.models.data2vec_text.modeling_data2vec_text import (
    Data2VecTextForPreTraining,
    Data2VecTextPretrainingModel,
)

TINY_D2V = {
    "model_type": "data2vec-text",
    "hidden_size": 32,
    "num_hidden_layers": 3,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "vocab_size": VOCAB,
    "max_position_embeddings": 80,
    "pad_token_id": 0,  # our tokenizer's [PAD]; data2vec text (RoBERTa's layout) counts positions from it
}


def tiny_config(**overrides) -> Data2VecTextPretrainingConfig:
    return Data2VecTextPretrainingConfig(encoder=dict(TINY_D2V), **{"average_top_k_layers": 2, **overrides})


@cache
def packed_blocks(max_seq_length: int = 32):
    return tokenize_dataset(load_default_text("train").select(range(200)), tokenizer(), "text", max_seq_length)


def masked_batch(batch_size: int = 8, seed: int = 0) -> dict[str, torch.Tensor]:
    """Real sentences, packed into blocks of 32 and masked as MLM's (80/10/10) with a seeded generator."""
    collate = TokenMaskingCollator.from_config(
        tokenizer(), tiny_config(), generator=torch.Generator().manual_seed(seed)
    )
    blocks = packed_blocks()
    return collate([blocks[i] for i in range(batch_size)])


# --------------------------------------------------------------------------------------------------------------------
# Targets and loss
# --------------------------------------------------------------------------------------------------------------------


def fairseq_targets(layers_tbc: list[torch.Tensor], top_k: int, layer_norm: bool, instance_norm: bool) -> torch.Tensor:
    """fairseq's target block (``Data2VecTextEncoder.forward`` in ``examples/data2vec/models/data2vec_text.py``),
    transcribed for the test: layers in fairseq's ``(T, B, C)`` layout, the ``*_target_layer`` flags; ``(B, T, C)``
    out."""
    y = layers_tbc[-top_k:]
    permuted = False
    if instance_norm:
        y = [tl.permute(1, 2, 0) for tl in y]  # TBC -> BCT
        permuted = True
        y = [F.instance_norm(tl.float()) for tl in y]
        y = [tl.transpose(1, 2) for tl in y]  # BCT -> BTC
    if layer_norm:
        y = [F.layer_norm(tl.float(), tl.shape[-1:]) for tl in y]
    y = sum(y) / len(y)
    if not permuted:
        y = y.transpose(0, 1)
    return y


@pytest.mark.parametrize("norm", ["layer_norm", "instance_norm"])
def test_targets_equal_fairseqs_on_the_same_layer_outputs(norm):
    layers = [torch.randn(3, 7, 16) * (i + 1) + i for i in range(4)]  # (B, L, H), different scales and offsets
    ours = data2vec_targets(layers, top_k=3, layer_norms=(norm,))
    theirs = fairseq_targets(
        [layer.transpose(0, 1) for layer in layers], 3, norm == "layer_norm", norm == "instance_norm"
    )
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def test_targets_by_hand():
    # two layers of one token with features (1, 3) and (0, 4): layer norm gives (-1, 1) for both; their mean too
    layers = [torch.tensor([[[1.0, 3.0]]]), torch.tensor([[[0.0, 4.0]]]), torch.tensor([[[9.0, -9.0]]])]
    targets = data2vec_targets(layers, top_k=2)
    torch.testing.assert_close(targets, _layer_norm_mean(layers[1:]))  # the last two layers only
    assert torch.allclose(data2vec_targets(layers[:2], top_k=2), torch.tensor([[[-1.0, 1.0]]]), atol=1e-4)


def _layer_norm_mean(layers: list[torch.Tensor]) -> torch.Tensor:
    normed = [
        (x - x.mean(-1, keepdim=True)) / torch.sqrt(x.var(-1, unbiased=False, keepdim=True) + 1e-5) for x in layers
    ]
    return sum(normed) / len(normed)


def test_instance_norm_over_the_tokens_of_each_sequence_ignores_padding():
    layer = torch.randn(2, 6, 8)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]])
    padded = layer.clone()
    padded[0, 4:] = 1e3  # padding: must not move the statistics
    targets = data2vec_targets([padded], 1, ("instance_norm",), (), mask)
    torch.testing.assert_close(targets[0, :4], F.instance_norm(layer[:1, :4].transpose(1, 2)).transpose(1, 2)[0])
    torch.testing.assert_close(targets[1], F.instance_norm(layer[1:].transpose(1, 2)).transpose(1, 2)[0])


def test_regression_loss_by_hand():
    predictions = torch.tensor([[0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    targets = torch.tensor([[0.5, -3.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    # L2: (0.25 + 9) summed, times 1/sqrt(4)
    assert regression_loss(predictions, targets, beta=0).item() == pytest.approx(9.25 / 2)
    # smooth L1, beta 1: 0.5 * 0.5^2 / 1 = 0.125 (quadratic) and 3 - 0.5 = 2.5 (linear); loss_scale 1
    assert regression_loss(predictions, targets, beta=1.0, scale=1.0).item() == pytest.approx(2.625)
    # beta 4 (fairseq's text recipe): both quadratic: 0.5 * (0.25 + 9) / 4
    assert regression_loss(predictions, targets, beta=4.0, scale=1.0).item() == pytest.approx(0.5 * 9.25 / 4)


# --------------------------------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------------------------------


def test_shapes_and_only_masked_positions_count():
    model = Data2VecTextForPreTraining(tiny_config(loss_beta=0.5)).eval()
    batch = masked_batch()
    selected = batch["labels"] != -100
    n = int(selected.sum())
    assert 0 < n < selected.numel()
    out = model(**batch)
    assert out.loss.shape == () and out.predictions.shape == (n, 32) and out.targets.shape == (n, 32)
    assert out.last_hidden_state.shape == (*batch["input_ids"].shape, 32)
    # the logged spreads (fairseq's target_var / pred_var): per-feature std over the masked tokens, averaged
    torch.testing.assert_close(out.target_std, out.targets.std(dim=0, unbiased=False).mean())
    torch.testing.assert_close(out.prediction_std, out.predictions.detach().std(dim=0, unbiased=False).mean())
    assert out.prediction_std.requires_grad is False and 0 < out.prediction_std

    # the loss is the regression of the head's outputs at the selected positions onto the teacher's targets there
    full_targets = model.teacher_targets(
        torch.where(selected, batch["labels"], batch["input_ids"]), batch["attention_mask"]
    )
    head = model.regression_head(out.last_hidden_state)  # (B, L, H), every position
    expected = F.smooth_l1_loss(head[selected], full_targets[selected], beta=0.5, reduction="sum") / math.sqrt(32) / n
    torch.testing.assert_close(out.loss, expected)

    # no gradient reaches the student's output at an unmasked position
    out.last_hidden_state.retain_grad()
    out.loss.backward()
    grad = out.last_hidden_state.grad.abs().sum(-1)  # (B, L)
    assert (grad[~selected] == 0).all() and (grad[selected] > 0).all()

    # normalised by the step's global count when the Trainer passes it
    torch.testing.assert_close(model(**batch, num_items_in_batch=2 * n).loss, out.loss.detach() / 2)


def test_the_teacher_reads_the_unmasked_tokens():
    model = Data2VecTextForPreTraining(tiny_config()).eval()
    batch = masked_batch()
    original = torch.where(batch["labels"] != -100, batch["labels"], batch["input_ids"])
    expected = model.teacher_targets(original, batch["attention_mask"])[batch["labels"] != -100]
    torch.testing.assert_close(model(**batch).targets, expected)
    assert not torch.equal(model.teacher_targets(batch["input_ids"], batch["attention_mask"]), expected)


def test_targets_are_computed_without_gradient_and_the_teacher_gets_none():
    model = Data2VecTextForPreTraining(tiny_config()).train()
    out = model(**masked_batch())
    assert not out.targets.requires_grad
    out.loss.backward()
    teacher = dict(model.teacher.named_parameters())
    assert teacher and all(not p.requires_grad and p.grad is None for p in teacher.values())
    student = {k: p for k, p in model.named_parameters() if not k.startswith("teacher.")}
    no_grad = [k for k, p in student.items() if p.grad is None or not p.grad.abs().sum() > 0]
    assert no_grad == [], no_grad


def test_ffn_targets_are_the_feed_forward_output_before_the_last_residual():
    """The "ffn" tap (fairseq's ``fc_results``): with the layer's input to its output block, LayerNorm(ffn + input)
    must give the layer's output; the top-1 "ffn" target is that ffn output, layer-normed."""
    model = Data2VecTextForPreTraining(tiny_config(average_top_k_layers=1)).eval()
    batch = masked_batch(batch_size=2)
    teacher = model.teacher.data2vec_text.encoder
    last = teacher.encoder.layer[-1].output
    seen = {}
    handle = last.register_forward_hook(lambda module, args, output: seen.update(args=args, output=output))
    try:
        targets = model.teacher_targets(batch["input_ids"], batch["attention_mask"])
    finally:
        handle.remove()
    intermediate, residual = seen["args"]
    ffn = last.dense(intermediate)
    torch.testing.assert_close(last.LayerNorm(ffn + residual), seen["output"])
    torch.testing.assert_close(targets, F.layer_norm(ffn, ffn.shape[-1:]))
    block = Data2VecTextForPreTraining(tiny_config(average_top_k_layers=1, target_layer_output="block")).eval()
    block.load_state_dict(model.state_dict())
    torch.testing.assert_close(
        block.teacher_targets(batch["input_ids"], batch["attention_mask"]),
        F.layer_norm(seen["output"], seen["output"].shape[-1:]),
    )


@pytest.mark.parametrize("embeddings_from_student", [True, False])
def test_teacher_runs_in_eval_mode_and_follows_the_ema(embeddings_from_student):
    model = Data2VecTextForPreTraining(tiny_config(teacher_embeddings_from_student=embeddings_from_student)).train()
    batch = masked_batch(batch_size=2)
    torch.manual_seed(1)
    first = model.teacher_targets(batch["input_ids"], batch["attention_mask"])
    second = model.teacher_targets(batch["input_ids"], batch["attention_mask"])
    torch.testing.assert_close(first, second)  # no dropout, although the model trains
    assert model.teacher.training  # and left in the mode it had
    student = dict(model.data2vec_text.named_parameters())
    before = {k: p.clone() for k, p in model.teacher.data2vec_text.named_parameters()}
    assert all(torch.equal(before[k], student[k]) for k in before)  # starts equal to the student
    model(**batch).loss.backward()
    torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5).step()
    model.update_teacher(0.9)
    moved = 0
    for k, p in model.teacher.data2vec_text.named_parameters():
        if embeddings_from_student and k.startswith("encoder.embeddings."):
            assert torch.equal(p, student[k]), k  # fairseq's ema_transformer_layers_only: the student's own
        else:
            torch.testing.assert_close(p, 0.9 * before[k] + 0.1 * student[k], rtol=0, atol=1e-6)
            moved += not torch.equal(p, student[k])
    assert moved > 0


def test_config_is_checked():
    with pytest.raises(UsageError, match="average_top_k_layers"):
        tiny_config(average_top_k_layers=4)  # the encoder has 3 layers
    with pytest.raises(UsageError, match="average_top_k_layers"):
        tiny_config(average_top_k_layers=0)
    with pytest.raises(UsageError, match="target_norm"):
        tiny_config(target_norm="batch_norm")
    with pytest.raises(UsageError, match="target_layer_output"):
        tiny_config(target_layer_output="attention")
    with pytest.raises(UsageError, match="loss_beta"):
        tiny_config(loss_beta=-1)
    with pytest.raises(UsageError, match="teacher_momentum_final"):
        tiny_config(teacher_momentum=0.999, teacher_momentum_final=0.99)
    with pytest.raises(UsageError, match="mask_replace_prob"):
        tiny_config(mask_replace_prob=0.9, random_replace_prob=0.2)
    default = Data2VecTextPretrainingConfig()
    assert default.encoder.model_type == "data2vec-text" and default.encoder.num_hidden_layers == 4
    assert default.average_top_k_layers == 3  # the paper's 8 of 12, in proportion
    twelve = Data2VecTextPretrainingConfig(encoder={**TINY_D2V, "num_hidden_layers": 12})
    assert twelve.average_top_k_layers == 8


def test_ffn_targets_need_berts_layout_and_block_targets_work_on_any_encoder():
    distilbert = {"model_type": "distilbert", "dim": 32, "n_layers": 2, "n_heads": 2, "hidden_dim": 64,
                  "vocab_size": VOCAB, "max_position_embeddings": 64, "pad_token_id": 0}  # fmt: skip
    with pytest.raises(UsageError, match="target_layer_output 'ffn'"):
        Data2VecTextForPreTraining(Data2VecTextPretrainingConfig(encoder=distilbert, average_top_k_layers=2))
    model = Data2VecTextForPreTraining(
        Data2VecTextPretrainingConfig(encoder=distilbert, average_top_k_layers=2, target_layer_output="block")
    )
    batch = masked_batch(batch_size=2)
    batch.pop("token_type_ids", None)
    assert torch.isfinite(model(**batch).loss)


def test_save_load_keeps_student_and_teacher(tmp_path):
    model = Data2VecTextForPreTraining(tiny_config())
    with torch.no_grad():
        for p in model.data2vec_text.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    model.update_teacher(0.5)  # the teacher now differs from the student and from its initialisation
    model.save_pretrained(tmp_path)
    loaded = Data2VecTextForPreTraining.from_pretrained(tmp_path).eval()
    model.eval()
    assert not any(p.requires_grad for p in loaded.teacher.parameters())
    for (k, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    batch = masked_batch(batch_size=2)
    torch.testing.assert_close(loaded(**batch).loss, model(**batch).loss)
    backbone = Data2VecTextPretrainingModel.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(
        backbone(batch["input_ids"], batch["attention_mask"]).last_hidden_state,
        model.data2vec_text(batch["input_ids"], batch["attention_mask"]).last_hidden_state,
    )


def test_a_few_steps_lower_the_loss_on_real_text():
    torch.manual_seed(0)
    model = Data2VecTextForPreTraining(tiny_config()).train()
    batch = masked_batch(batch_size=16)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    losses = []
    for _ in range(25):
        loss = model(**batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        model.update_teacher(0.99)
        losses.append(loss.item())
    assert sum(losses[-3:]) / 3 < 0.7 * sum(losses[:3]) / 3, losses


def test_the_encoder_reads_as_many_tokens_as_its_positions_allow():
    """data2vec text counts positions from ``pad_token_id + 1``, as RoBERTa: the sequence limit is that much lower."""
    config = tiny_config()
    assert max_sequence_length(config) == 80 - 1  # pad_token_id 0
    check_sequence_length(config, 79)
    with pytest.raises(UsageError, match="max_seq_length 80"):
        check_sequence_length(config, 80)
    model = Data2VecTextForPreTraining(config).eval()
    input_ids = torch.randint(5, VOCAB, (1, 79))
    labels = torch.full_like(input_ids, -100)
    labels[0, 3] = input_ids[0, 3]
    assert torch.isfinite(model(input_ids, labels).loss)


def test_starting_from_an_encoder_checkpoint_starts_student_and_teacher(tmp_path):
    encoder_config = Data2VecTextConfig(**{k: v for k, v in TINY_D2V.items() if k != "model_type"})
    Data2VecTextModel(encoder_config).save_pretrained(tmp_path)
    reference = Data2VecTextModel.from_pretrained(tmp_path).state_dict()
    model = Data2VecTextForPreTraining(tiny_config())
    model.load_encoder_checkpoint(str(tmp_path), encoder_config)
    for tower in (model.data2vec_text.encoder, model.teacher.data2vec_text.encoder):
        for name, tensor in tower.state_dict().items():
            assert torch.equal(tensor, reference[name]), name
