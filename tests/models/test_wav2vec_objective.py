"""wav2vec as an objective: the shared checks, data preparation and seeded crops, layer-wise features, and the command
line end to end (pretrain on the embedded default, evaluate, export, evaluate the export, start again from it;
unusable clips as a counted skip or a one-line error)."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import textwrap

import datasets
import numpy as np
import pytest
import soundfile
import torch
from common import ObjectiveChecks
from huggingface_hub import ModelCard
from tiny_wav2vec import NO_DROPOUT, RATE, TINY_BACKBONE, tiny_wav2vec_config, tiny_wav2vec_flags
from transformers import AutoConfig, Wav2Vec2Model

from hf_ssl import UsageError, Wav2VecConfig, Wav2VecForPreTraining
from hf_ssl.cli import main
from hf_ssl.data import AudioDataArguments, load_default_audio
from hf_ssl.masking import compute_span_mask
from hf_ssl.models.wav2vec import WAV2VEC
from hf_ssl.models.wav2vec.masking import sample_negative_indices

TINY_FLAGS = tiny_wav2vec_flags(NO_DROPOUT)
RUN_FLAGS = ["--per_device_train_batch_size", "8", "--save_strategy", "no", "--disable_tqdm", "true",
             "--report_to", "none"]  # fmt: skip


def tiny_config(**overrides) -> Wav2VecConfig:
    return tiny_wav2vec_config(NO_DROPOUT, **overrides)


class TestWav2VecObjective(ObjectiveChecks):
    objective = WAV2VEC

    def tiny_config(self):
        return tiny_config()

    def pretrain_flags(self):
        return [*TINY_FLAGS, "--per_device_train_batch_size", "4"]

    def batch(self, config):
        generator = torch.Generator().manual_seed(0)
        input_values = torch.randn(2, RATE, generator=generator)
        attention_mask = torch.ones(2, RATE, dtype=torch.long)
        attention_mask[1, 6000:] = 0
        model = Wav2VecForPreTraining(config)
        frames = int(model._get_feat_extract_output_lengths(RATE))
        lengths = model._get_feat_extract_output_lengths(attention_mask.sum(-1))
        mask = compute_span_mask(2, frames, 0.5, 4, 2, lengths=lengths, generator=generator)
        negatives = sample_negative_indices(mask, config.num_negatives, generator=generator)
        return {
            "input_values": input_values,
            "attention_mask": attention_mask,
            "mask_time_indices": mask,
            "sampled_negative_indices": negatives,
        }

    @pytest.mark.slow
    def test_export_loads_without_hf_ssl(self, tmp_path):
        """The shared check, extended: in an interpreter that never imports hf_ssl, the export is a plain
        ``Wav2Vec2Model`` giving the checkpoint's outputs, starts ``AutoModelForAudioClassification``, and carries
        the pretraining's feature extractor."""
        from hf_ssl.export import export_backbone

        config = self.tiny_config()
        model = self._model(config).eval()
        with torch.no_grad():  # away from the seeded init, so equal outputs prove the weights were carried over
            for parameter in model.parameters():
                parameter.add_(0.01 * torch.randn_like(parameter))
        model.save_pretrained(tmp_path / "ckpt")
        out = export_backbone(tmp_path / "ckpt", tmp_path / "export")
        assert {p.name for p in out.iterdir()} == set(self.objective.exporter.files)
        x = torch.randn(2, RATE)
        with torch.no_grad():
            torch.save({"x": x, "expected": model.wav2vec(x).last_hidden_state}, tmp_path / "io.pt")
        script = textwrap.dedent(
            f"""
            import sys, torch
            from transformers import AutoFeatureExtractor, AutoModel, AutoModelForAudioClassification, Wav2Vec2Model
            path, io = {str(out)!r}, torch.load({str(tmp_path / "io.pt")!r})
            model = AutoModel.from_pretrained(path).eval()
            assert type(model) is Wav2Vec2Model, type(model)
            with torch.no_grad():
                got = model(io["x"]).last_hidden_state
            torch.testing.assert_close(got, io["expected"], rtol=1e-5, atol=1e-5)
            classifier = AutoModelForAudioClassification.from_pretrained(path, num_labels=3).eval()
            with torch.no_grad():
                assert classifier(io["x"]).logits.shape == (2, 3)
            extractor = AutoFeatureExtractor.from_pretrained(path)
            assert extractor.sampling_rate == {RATE} and extractor.do_normalize and extractor.return_attention_mask
            assert not [name for name in sys.modules if name.split(".")[0] == "hf_ssl"]
            print("ok")
            """
        )
        env = {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
        result = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=300, env=env
        )
        assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-3000:]


def _wav(wave: np.ndarray, rate: int = RATE) -> dict:
    buffer = io.BytesIO()
    soundfile.write(buffer, wave, rate, format="WAV", subtype="PCM_16")
    return {"bytes": buffer.getvalue(), "path": None}


def test_prepare_data_checks_clips_and_seeds_crops():
    config = tiny_config(max_duration_seconds=0.3)  # shorter than every clip: each is cropped
    ds = load_default_audio("train").select(range(12))
    prepared = WAV2VEC.prepare_data(ds, config, AudioDataArguments())
    assert prepared.columns == {"audio": "audio"} and prepared.num_skipped == 0
    assert prepared.processing_class.sampling_rate == RATE and prepared.processing_class.return_attention_mask
    collator = prepared.collator
    rows = [prepared.dataset[i] for i in range(8)]
    collator.set_position(seed=3, rank=0, batches_done=5)
    first = collator(rows)
    collator.set_position(seed=3, rank=0, batches_done=5)
    again = collator(rows)
    torch.testing.assert_close(first["input_values"], again["input_values"])  # a resumed run crops the same
    later = collator(rows)  # the next batch position draws other crops (clips are longer than the crop)
    assert not torch.equal(first["input_values"], later["input_values"])
    assert first["input_values"].shape[1] <= int(config.max_duration_seconds * RATE)


def test_prepare_data_streams_filter_and_raw_arrays():
    config = tiny_config()
    good = np.sin(np.linspace(0, 400, 16000)).astype(np.float32)
    rows = {"audio": [_wav(good), {"bytes": b"broken", "path": "bad.wav"}, _wav(good)]}
    clips = datasets.Dataset.from_dict(rows).cast_column("audio", datasets.Audio(decode=False))
    streamed = clips.to_iterable_dataset()
    args = AudioDataArguments(on_bad_example="skip")
    prepared = WAV2VEC.prepare_data(streamed, config, args)
    assert len(list(prepared.dataset)) == 2  # filtered before batching, never inside the collator
    # a named column of bare arrays at another rate, resampled to the model's
    arrays = datasets.Dataset.from_dict({"samples": [good.tolist(), good[:8000].tolist()]})
    args = AudioDataArguments(audio_column="samples", audio_sampling_rate=16000)
    prepared = WAV2VEC.prepare_data(arrays, config, args)
    batch = prepared.collator([prepared.dataset[i] for i in range(2)])
    assert batch["attention_mask"].sum(-1).tolist() == [RATE, RATE // 2]


@pytest.mark.slow
def test_cli_pretrain_evaluate_export_and_start_from_the_export(tmp_path, capsys):
    run, out = tmp_path / "run", tmp_path / "export"
    main(["pretrain", "wav2vec", *TINY_FLAGS, *RUN_FLAGS, "--max_steps", "3", "--logging_steps", "1",
          "--output_dir", str(run)])  # fmt: skip
    info = json.loads((run / "hf_ssl_run.json").read_text())
    assert info["objective"] == "wav2vec" and info["num_examples"] == 240 and info["global_step"] == 3
    assert info["columns"] == {"audio": "audio"} and info["modality"] == "audio"
    logged = [entry for entry in info["log_history"] if "loss" in entry]
    assert {"contrastive_loss", "codevector_perplexity", "gumbel_temperature"} <= set(logged[0])
    assert (run / "preprocessor_config.json").exists()

    eval_file = run / "eval_results.json"
    main(["evaluate", "--model_name_or_path", str(run), "--output_file", str(eval_file), "--probe_max_iter", "20"])
    results = json.loads(eval_file.read_text())
    assert results["modality"] == "audio" and results["dataset"] == "synthetic_words" and results["num_test"] == 60
    assert list(results["layers"]) == ["layer_0", "layer_1", "layer_2"] and results["layer"] == "layer_2"
    held_out = results["best_layer_held_out_accuracy"]  # the best layer is chosen on training rows, not on the test
    assert list(held_out) == list(results["layers"]) and results["best_layer"] == max(held_out, key=held_out.get)
    assert results["linear_probe"] == results["layers"]["layer_2"]["linear_probe"]
    assert results["baselines"]["random_init"]["best_layer"] in results["layers"]
    assert results["baselines"]["log_mel_stats"]["num_features"] == 80
    assert "log mel stats" in capsys.readouterr().out

    main(["export", str(run), str(out)])
    assert {p.name for p in out.iterdir()} == set(WAV2VEC.exporter.files)
    assert AutoConfig.from_pretrained(out).model_type == "wav2vec2"
    card = ModelCard.load(out / "README.md")
    assert card.data.library_name == "transformers" and card.data.eval_results
    assert f"training rows): `{results['best_layer']}`" in card.text and "baevski2020wav2vec" in card.text

    # the export (a plain Wav2Vec2Model) evaluates to the same numbers
    exported_file = tmp_path / "export_eval.json"
    main(["evaluate", "--model_name_or_path", str(out), "--output_file", str(exported_file), "--probe_max_iter", "20",
          "--baselines", "false"])  # fmt: skip
    exported = json.loads(exported_file.read_text())
    for layer, entry in results["layers"].items():
        assert exported["layers"][layer]["knn"]["accuracy"] == pytest.approx(entry["knn"]["accuracy"])

    # and pretraining can start from it (a transformers wav2vec 2.0 checkpoint)
    again = tmp_path / "again"
    main(["pretrain", "wav2vec", *RUN_FLAGS, "--model_name_or_path", str(out), "--max_steps", "1",
          *TINY_FLAGS[2:], "--output_dir", str(again), "--learning_rate", "0"])  # fmt: skip
    start = Wav2Vec2Model.from_pretrained(out)
    from hf_ssl.backbones import load_backbone

    resumed = load_backbone(again).backbone
    for name, value in start.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[name], value)
    with pytest.raises(UsageError, match="both describe the backbone"):
        WAV2VEC.make_config({"backbone": TINY_BACKBONE}, str(out))


@pytest.mark.slow
def test_cli_bad_clips_error_in_one_line_or_are_skipped_and_counted(tmp_path, capsys):
    good = np.sin(np.linspace(0, 400, 8000)).astype(np.float32)
    rows = [_wav(good * (0.2 + 0.05 * i)) for i in range(9)]
    rows[4] = {"bytes": b"not audio", "path": "clip_4.wav"}
    rows[6] = _wav(good[:50])  # shorter than the receptive field
    data = tmp_path / "clips"
    datasets.Dataset.from_dict({"audio": rows}).cast_column("audio", datasets.Audio(decode=False)).save_to_disk(data)
    base = ["pretrain", "wav2vec", *TINY_FLAGS, *RUN_FLAGS, "--max_steps", "1", "--dataset_name", str(data),
            "--per_device_train_batch_size", "4"]  # fmt: skip
    with pytest.raises(SystemExit) as exit_info:
        main([*base, "--output_dir", str(tmp_path / "fails")])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("hf-ssl: error: 2 of 9 audio examples are unusable (rows [4, 6])")
    assert "clip_4.wav" in error and "too short" in error and "--on_bad_example skip" in error
    main([*base, "--on_bad_example", "skip", "--output_dir", str(tmp_path / "skips")])
    info = json.loads((tmp_path / "skips" / "hf_ssl_run.json").read_text())
    assert info["num_skipped"] == 2 and info["num_examples"] == 7
