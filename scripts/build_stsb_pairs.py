"""Write the STS Benchmark's scored pairs as JSON lines, the input of ``scripts/configs/simcse_sup_stsb.yaml``.

STS-B's ``.tsv`` files have no header and a few lines carry extra trailing columns, so ``--dataset_name`` cannot read
them as they are; this writes one ``{"sentence1", "sentence2", "score"}`` object a line, which it reads as a data
file. From the project root:

    python scripts/build_stsb_pairs.py      # ../shared/data/text/stsb train -> runs/data/stsb_train.jsonl
    OMP_NUM_THREADS=1 hf-ssl pretrain simcse --config scripts/configs/simcse_sup_stsb.yaml
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

DEFAULT_STSB = "../shared/data/text/stsb"
DEFAULT_OUTPUT = "runs/data/stsb_train.jsonl"


def main(argv: list[str] | None = None) -> Path:
    """Read one split of STS pairs and write them as JSON lines; returns the file written.

    Args:
        argv: ``[--stsb DIR] [--split NAME] [--output FILE]`` (default: the command line).
    """
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stsb", default=DEFAULT_STSB, help="STS-B folder (<split>.tsv) or any STS data")
    parser.add_argument("--split", default="train", help="the split to write")
    parser.add_argument("--output", default=DEFAULT_OUTPUT, help="the JSON-lines file to write")
    args = parser.parse_args(argv)

    from hf_ssl.errors import UsageError
    from hf_ssl.evaluation.sts import load_sts

    if not Path(args.stsb).exists():
        sys.exit(f"build_stsb_pairs.py: error: --stsb {args.stsb}: no such file or folder")
    try:
        pairs = load_sts(args.stsb, args.split)
    except UsageError as err:
        sys.exit(f"build_stsb_pairs.py: error: {err}")
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    pairs.to_json(output)
    print(f"wrote {len(pairs)} pairs (sentence1, sentence2, score) of {args.stsb} {args.split} to {output}")
    return output


if __name__ == "__main__":
    main()
