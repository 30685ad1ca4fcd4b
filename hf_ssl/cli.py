"""``hf-ssl pretrain|evaluate|export``: HfArgumentParser front ends, configurable by flags and YAML/JSON files.

Every ``TrainingArguments`` flag works, and every hyperparameter of the objective's config is a flag of its own
(``--backbone``, ``--loss_temperature``, ...), generated from the config class so the two never drift apart.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import logging
import os
import re
import sys
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import yaml
from transformers import AutoConfig, HfArgumentParser, set_seed

import hf_ssl
from hf_ssl.data import check_images, find_column, load_data, undecoded
from hf_ssl.objectives import OBJECTIVES, Objective, get_objective
from hf_ssl.trainer import RUN_INFO_FILE, SSLTrainer, SSLTrainingArguments

logger = logging.getLogger("hf_ssl")


@dataclass
class DataArguments:
    dataset_name: str | None = field(
        default=None,
        metadata={
            "help": "Hub id, local folder (imagefolder, data files, save_to_disk) or a single data file. "
            "Empty: the embedded scikit-learn digits, no download."
        },
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "The Hub dataset's configuration."})
    train_split: str = field(default="train", metadata={"help": "Split to pretrain on; slices like train[:5000]."})
    image_column: str | None = field(default=None, metadata={"help": "Image column (detected if not given)."})
    streaming: bool = field(default=False, metadata={"help": "Stream the dataset (needs --max_steps)."})
    on_bad_image: Literal["error", "skip"] = field(
        default="error",
        metadata={"help": "Undecodable images, found before training: stop naming them, or skip."},
    )
    cache_dir: str | None = field(default=None, metadata={"help": "Where datasets caches downloads."})


@dataclass
class ModelArguments:
    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Continue from this checkpoint (its config and weights) instead of a new model."},
    )


@dataclass
class EvaluationArguments:
    model_name_or_path: str = field(metadata={"help": "Checkpoint folder (a pretraining output_dir)."})
    dataset_name: str | None = field(default=None, metadata={"help": "As for pretrain; empty: embedded digits."})
    dataset_config_name: str | None = field(default=None, metadata={"help": "The Hub dataset's configuration."})
    split: str = field(default="test", metadata={"help": "Split evaluated on."})
    train_split: str = field(default="train", metadata={"help": "Split the kNN bank and linear probe train on."})
    image_column: str | None = field(default=None, metadata={"help": "Image column (detected if not given)."})
    label_column: str | None = field(default=None, metadata={"help": "Label column (detected if not given)."})
    output_file: str | None = field(default=None, metadata={"help": "Write the results here as JSON."})
    knn_k: int = field(default=20, metadata={"help": "Neighbours in the kNN vote."})
    knn_temperature: float = field(default=0.07, metadata={"help": "Temperature of the kNN vote weights."})
    probe_max_iter: int = field(
        default=100,
        metadata={"help": "L-BFGS iterations of the linear probe at most (scikit-learn's default is also 100)."},
    )
    batch_size: int = field(default=256, metadata={"help": "Feature-extraction batch size."})
    baselines: bool = field(default=True, metadata={"help": "Also evaluate raw pixels and a random-init backbone."})
    seed: int = field(default=0, metadata={"help": "Seed for the random-init baseline and the probe."})
    cache_dir: str | None = field(default=None, metadata={"help": "Where datasets caches downloads."})


@dataclass
class ExportArguments:
    model_dir: str = field(metadata={"help": "Checkpoint folder (a pretraining output_dir)."})
    output_dir: str = field(metadata={"help": "Folder to write the exported backbone and model card to."})
    eval_file: str | None = field(
        default=None,
        metadata={"help": "Evaluation JSON for the model card (default: eval_results.json in model_dir)."},
    )
    push_to_hub: bool = field(default=False, metadata={"help": "Upload the exported folder to the Hub."})
    hub_model_id: str | None = field(default=None, metadata={"help": "Repository to push to (user/name)."})
    hub_token: str | None = field(default=None, metadata={"help": "Token for the Hub (default: the saved login)."})
    hub_private_repo: bool = field(default=False, metadata={"help": "Create the repository as private."})


def config_arguments(config_class: type) -> type:
    """A dataclass with one optional field per hyperparameter of ``config_class.__init__``.

    Types follow the annotations (dicts are given as JSON strings); help texts come from the class docstring's
    ``Args:`` section. A field left at ``None`` keeps the config's own default.
    """
    docs = _docstring_args(config_class.__doc__ or "")
    fields = []
    for name, param in inspect.signature(config_class.__init__).parameters.items():
        if name == "self" or param.kind in (param.VAR_KEYWORD, param.VAR_POSITIONAL):
            continue
        annotation = str(param.annotation)
        if annotation.startswith("dict"):
            kind: Any = str
        elif annotation.startswith("list[float]"):
            kind = list[float]
        elif annotation.startswith("list[int]"):
            kind = list[int]
        else:
            kind = {"bool": bool, "int": int, "float": float}.get(annotation.split(" ")[0], str)
        help_text = docs.get(name, "") + f" (default: {param.default})"
        fields.append((name, kind | None, field(default=None, metadata={"help": help_text})))
    return dataclasses.make_dataclass(f"{config_class.__name__}Arguments", fields)


def _docstring_args(doc: str) -> dict[str, str]:
    section = doc.split("Args:", 1)[-1] if "Args:" in doc else ""
    entries = re.findall(r"^\s{8}(\w+): (.*?)(?=^\s{8}\w+: |\Z)", section, flags=re.M | re.S)
    return {name: " ".join(text.split()) for name, text in entries}


def make_parser(*dataclass_types: type) -> HfArgumentParser:
    """An ``HfArgumentParser`` in which optional booleans (``bool | None``, default ``None``) may also be given as a
    bare ``--flag`` meaning true, as plain boolean fields can."""
    parser = HfArgumentParser(dataclass_types)
    optional_bools = {
        f.name for t in dataclass_types for f in dataclasses.fields(t) if f.type == bool | None and f.default is None
    }
    for action in parser._actions:
        if action.dest in optional_bools:
            action.nargs, action.const = "?", True
    return parser


def config_overrides(args: Any) -> dict[str, Any]:
    """The fields the user set, with JSON strings (dict-typed fields) decoded."""
    overrides = {}
    for key, value in dataclasses.asdict(args).items():
        if value is None:
            continue
        if isinstance(value, str) and value.lstrip().startswith("{"):
            value = json.loads(value)
        overrides[key] = value
    return overrides


def parse(parser: HfArgumentParser, argv: list[str]) -> tuple[Any, ...]:
    """Parse ``argv``; ``--config FILE`` (YAML or JSON) supplies values that flags given after it override."""
    if "--config" in argv:
        at = argv.index("--config")
        if at + 1 >= len(argv):
            raise SystemExit("--config needs a file")
        path = argv[at + 1]
        with open(path) as handle:
            values = yaml.safe_load(handle) if path.endswith((".yaml", ".yml")) else json.load(handle)
        if not isinstance(values, dict):
            raise SystemExit(f"{path}: expected a mapping of argument names to values")
        argv = _as_flags(values) + argv[:at] + argv[at + 2 :]
    return parser.parse_args_into_dataclasses(args=argv)


def _as_flags(values: dict[str, Any]) -> list[str]:
    flags = []
    for key, value in values.items():
        flags.append(f"--{key}")
        if isinstance(value, dict):
            flags.append(json.dumps(value))
        elif isinstance(value, list):
            flags.extend(str(v) for v in value)
        else:
            flags.append(str(value))
    return flags


def pretrain(objective: Objective, argv: list[str]) -> str:
    """Parse ``argv`` and pretrain ``objective``; returns the output folder."""
    parser = make_parser(DataArguments, ModelArguments, SSLTrainingArguments, config_arguments(objective.config_class))
    data_args, model_args, training_args, config_args = parse(parser, argv)
    set_seed(training_args.seed)

    dataset = load_data(
        data_args.dataset_name,
        data_args.train_split,
        config_name=data_args.dataset_config_name,
        streaming=data_args.streaming,
        cache_dir=data_args.cache_dir,
    )
    column = find_column(dataset, objective.modality, data_args.image_column)
    if objective.modality == "image":
        dataset = undecoded(dataset, column)
        if not data_args.streaming:
            dataset = check_images(dataset, column, data_args.on_bad_image)

    overrides = config_overrides(config_args)
    if model_args.model_name_or_path:
        config = AutoConfig.from_pretrained(model_args.model_name_or_path, **overrides)
        model = objective.model_class.from_pretrained(model_args.model_name_or_path, config=config)
    else:
        config = objective.config_class(**overrides)
        model = objective.model_class(config)

    trainer = SSLTrainer(
        model=model,
        args=training_args,
        train_dataset=dataset,
        data_collator=objective.make_collator(model.config, column),
    )
    result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model()
    if trainer.is_world_process_zero():
        run_info = {
            "objective": objective.name,
            "hf_ssl_version": hf_ssl.__version__,
            "dataset_name": data_args.dataset_name or "digits (embedded scikit-learn digits)",
            "dataset_config_name": data_args.dataset_config_name,
            "train_split": data_args.train_split,
            "column": column,
            "num_examples": None if data_args.streaming else len(dataset),
            "global_step": result.global_step,
            "train_metrics": result.metrics,
            "log_history": trainer.state.log_history,
            "training_args": {
                key: getattr(training_args, key)
                for key in (
                    "max_steps",
                    "num_train_epochs",
                    "per_device_train_batch_size",
                    "gradient_accumulation_steps",
                    "learning_rate",
                    "weight_decay",
                    "lr_scheduler_type",
                    "warmup_steps",
                    "seed",
                )
            }
            | {"world_size": training_args.world_size, "optim": str(training_args.optim)},
        }
        with open(os.path.join(training_args.output_dir, RUN_INFO_FILE), "w") as handle:
            json.dump(run_info, handle, indent=2, default=str)
        logger.info("saved the model to %s", training_args.output_dir)
    if training_args.push_to_hub:
        trainer.push_to_hub()
    # every process waits for the main one to finish writing, then leaves the process group cleanly (a process
    # that exits with gloo's threads still running aborts, and torchrun then fails the whole run)
    trainer.accelerator.wait_for_everyone()
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    return training_args.output_dir


def evaluate_command(argv: list[str]) -> dict[str, Any]:
    from hf_ssl.evaluation import evaluate, format_table

    (args,) = parse(make_parser(EvaluationArguments), argv)
    results = evaluate(args)
    print(format_table(results))
    return results


def export_command(argv: list[str]) -> str:
    from hf_ssl.hub import export_backbone, push_folder

    # positional MODEL_DIR OUTPUT_DIR, as in `hf-ssl export DIR OUT`
    positional = [a for a in argv[:2] if not a.startswith("--")]
    argv = [f"--{name}={value}" for name, value in zip(("model_dir", "output_dir"), positional, strict=False)] + argv[
        len(positional) :
    ]
    (args,) = parse(make_parser(ExportArguments), argv)
    out = export_backbone(args.model_dir, args.output_dir, eval_file=args.eval_file)
    print(f"exported to {out}")
    if args.push_to_hub:
        if not args.hub_model_id:
            raise SystemExit("--push_to_hub needs --hub_model_id")
        url = push_folder(out, args.hub_model_id, token=args.hub_token, private=args.hub_private_repo)
        print(f"pushed to {url}")
    return str(out)


USAGE = """usage: hf-ssl <command> ...

  hf-ssl pretrain <objective> [--config FILE] [flags]   objectives: {objectives}
  hf-ssl evaluate --model_name_or_path DIR [--dataset_name D] [--split test] [--output_file F.json]
  hf-ssl export MODEL_DIR OUTPUT_DIR [--push_to_hub --hub_model_id user/name]

Add --help after a command (and objective) for every flag."""


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    usage = USAGE.format(objectives=", ".join(sorted(OBJECTIVES)))
    if not argv or argv[0] in ("-h", "--help"):
        print(usage)
        return
    command, rest = argv[0], argv[1:]
    if command == "pretrain":
        if not rest or rest[0].startswith("-"):
            raise SystemExit(f"hf-ssl pretrain needs an objective: {', '.join(sorted(OBJECTIVES))}")
        pretrain(get_objective(rest[0]), rest[1:])
    elif command == "evaluate":
        evaluate_command(rest)
    elif command == "export":
        export_command(rest)
    else:
        raise SystemExit(f"unknown command {command!r}\n\n{usage}")


if __name__ == "__main__":
    main()
