"""The arguments of :func:`hf_ssl.evaluation.evaluate` (also the flags of ``hf-ssl evaluate``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from hf_ssl.errors import check_choice, check_range


@dataclass
class EvaluationArguments:
    model_name_or_path: str = field(
        metadata={"help": "Checkpoint folder: a pretraining output_dir, or a backbone exported by hf-ssl export."}
    )
    dataset_name: str | None = field(
        default=None, metadata={"help": "As for pretrain; empty: the embedded default of the checkpoint's data kind."}
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "The Hub dataset's configuration."})
    split: str = field(default="test", metadata={"help": "Split evaluated on."})
    train_split: str = field(default="train", metadata={"help": "Split the kNN bank and linear probe train on."})
    input_column: str | None = field(
        default=None, metadata={"help": "Column of the images / texts / clips (detected if not given)."}
    )
    label_column: str | None = field(default=None, metadata={"help": "Label column (detected if not given)."})
    output_file: str | None = field(default=None, metadata={"help": "Write the results here as JSON."})
    knn_k: int = field(default=20, metadata={"help": "Neighbours in the kNN vote."})
    knn_temperature: float = field(default=0.07, metadata={"help": "Temperature of the kNN vote weights."})
    probe_max_iter: int = field(
        default=100,
        metadata={"help": "L-BFGS iterations of the linear probe at most (scikit-learn's default is also 100)."},
    )
    batch_size: int = field(default=256, metadata={"help": "Feature-extraction batch size."})
    baselines: bool = field(
        default=True, metadata={"help": "Also evaluate the task's baselines and a random-init backbone."}
    )
    seed: int = field(default=0, metadata={"help": "Seed for the random-init baseline."})
    cache_dir: str | None = field(default=None, metadata={"help": "Where datasets caches downloads."})
    task: str = field(
        default="auto",
        metadata={
            "help": "classification (kNN and linear probe of labelled rows), sts (cosine similarity of sentence pairs "
            "against their scores), or auto: sts when the split reads as (sentence1, sentence2, score) data."
        },
    )

    def __post_init__(self) -> None:
        check_choice("--task", self.task, ("auto", "classification", "sts"))
        check_range("--knn_k", self.knn_k, 1)
        check_range("--knn_temperature", self.knn_temperature, 0, low_inclusive=False)
        check_range("--probe_max_iter", self.probe_max_iter, 1)
        check_range("--batch_size", self.batch_size, 1)
