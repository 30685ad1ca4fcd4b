"""Pretrain any hf_ssl objective; launch with python, ``accelerate launch`` or ``torchrun``.

accelerate launch --num_processes 2 scripts/run_pretraining.py simclr --dataset_name cifar10 --max_steps 1000
"""

import sys

from hf_ssl.cli import main

if __name__ == "__main__":
    main(["pretrain", *sys.argv[1:]])
