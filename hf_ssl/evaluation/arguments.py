"""The arguments of :func:`hf_ssl.evaluation.evaluate` (also the flags of ``hf-ssl evaluate``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from hf_ssl.errors import UsageError, check_choice, check_range


@dataclass
class EvaluationArguments:
    model_name_or_path: str = field(
        metadata={
            "help": "Checkpoint folder: a pretraining output_dir, a backbone exported by hf-ssl export, a transformers "
            "text or speech encoder, a sentence-transformers or timm folder; or timm:<architecture> (e.g. "
            "timm:resnet18): a timm model by name, at random initialisation unless --timm_checkpoint gives weights."
        }
    )
    timm_checkpoint: str | None = field(
        default=None,
        metadata={"help": "Local weights (a .safetensors / .pth file, or a folder holding one) of a timm: model."},
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
    protocol: str = field(
        default="frozen",
        metadata={
            "help": "frozen (kNN and linear probe of the frozen features), finetune (the backbone trained end to end "
            "with a classifier head: its ecosystem's for an export), or all (both)."
        },
    )
    finetune_epochs: float = field(default=3.0, metadata={"help": "Fine-tuning passes over --train_split."})
    finetune_steps: int = field(default=-1, metadata={"help": "Fine-tuning steps; -1: --finetune_epochs decide."})
    finetune_learning_rate: float = field(default=1e-4, metadata={"help": "Peak AdamW learning rate of fine-tuning."})
    finetune_batch_size: int = field(default=32, metadata={"help": "Training rows per fine-tuning step."})

    def __post_init__(self) -> None:
        check_choice("--task", self.task, ("auto", "classification", "sts"))
        if self.timm_checkpoint is not None and not str(self.model_name_or_path).startswith("timm:"):
            raise UsageError("--timm_checkpoint needs --model_name_or_path timm:<architecture> (a folder has weights)")
        check_choice("--protocol", self.protocol, ("frozen", "finetune", "all"))
        if self.protocol != "frozen" and self.task == "sts":
            raise UsageError(f"--protocol {self.protocol} fine-tunes a classifier; --task sts has no classes")
        check_range("--finetune_epochs", self.finetune_epochs, 0, low_inclusive=False)
        steps = self.finetune_steps
        if steps != -1 and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
            raise UsageError(f"--finetune_steps must be -1 (epochs decide) or an integer >= 1, got {steps!r}")
        check_range("--finetune_learning_rate", self.finetune_learning_rate, 0, low_inclusive=False)
        check_range("--finetune_batch_size", self.finetune_batch_size, 1)
        check_range("--knn_k", self.knn_k, 1)
        check_range("--knn_temperature", self.knn_temperature, 0, low_inclusive=False)
        check_range("--probe_max_iter", self.probe_max_iter, 1)
        check_range("--batch_size", self.batch_size, 1)
