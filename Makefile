# The few commands a contributor needs.
.PHONY: install demo test test-fast lint format benchmark

install:
	python3 -m venv .venv && .venv/bin/pip install -e ".[dev]"

demo:
	OMP_NUM_THREADS=1 .venv/bin/hf-ssl pretrain simclr --config scripts/configs/simclr_digit_scenes.yaml
	.venv/bin/hf-ssl evaluate --model_name_or_path runs/simclr-digit-scenes --dataset_name digit-scenes --probe_max_iter 1000 \
		--output_file runs/simclr-digit-scenes/eval_results.json

test:
	HF_HUB_OFFLINE=1 .venv/bin/python -m pytest -q

test-fast:  # the inner loop: without the subprocess, multi-process and whole-CLI tests (marked slow)
	HF_HUB_OFFLINE=1 .venv/bin/python -m pytest -q -m "not slow"

lint:
	.venv/bin/ruff check hf_ssl tests scripts && .venv/bin/ruff format --check hf_ssl tests scripts

format:
	.venv/bin/ruff format hf_ssl tests scripts && .venv/bin/ruff check --fix hf_ssl tests scripts

benchmark:
	.venv/bin/python scripts/benchmark_simclr.py
