"""``hf-ssl pretrain|evaluate|export``: HfArgumentParser front ends, configurable by flags and YAML/JSON files.

Every ``TrainingArguments`` flag works, the objective's data flags, and every hyperparameter of the objective's
config is a flag of its own (``--backbone``, ``--loss_temperature``, ...), generated from the config class so the
two never drift apart. Mistakes a user can fix (:class:`~hf_ssl.errors.UsageError`) end as one line,
``hf-ssl: error: ...``, exit status 2; ``--debug`` (or ``HF_SSL_DEBUG=1``) shows their traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import inspect
import json
import logging
import math
import os
import re
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import yaml
from transformers import HfArgumentParser, set_seed

from hf_ssl._version import __version__
from hf_ssl.callbacks import BatchRandomnessCallback, RunInfo, RunInfoCallback
from hf_ssl.checkpoints import check_checkpoint_fits, checkpoint_model_type, incomplete_reason, last_complete_checkpoint
from hf_ssl.data import data_source, load_data
from hf_ssl.data.collators import SeededCollator
from hf_ssl.errors import UsageError
from hf_ssl.evaluation.arguments import EvaluationArguments
from hf_ssl.evaluation.online_probe import OnlineProbe, ProbeArguments, evaluation_schedule
from hf_ssl.health import HealthCallback
from hf_ssl.objectives import (
    COMMANDS,
    OBJECTIVES,
    SHARED_PROCESSOR_FOLDER,
    Objective,
    PreparedData,
    get_objective,
)
from hf_ssl.trainer import SSLTrainer, SSLTrainingArguments

logger = logging.getLogger("hf_ssl")


@dataclass
class DataArguments:
    _argument_group_name = "data"

    dataset_name: str | None = field(
        default=None,
        metadata={
            "help": "Hub id, local folder (imagefolder, audiofolder, data files, save_to_disk) or a single data file; "
            "several (space- or comma-separated, or a YAML list) are concatenated on the columns they share. "
            "Empty: the objective's embedded default dataset, no download.",
            "nargs": "+",
        },
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "The Hub dataset's configuration."})
    train_split: str = field(
        default="train", metadata={"help": "Split to pretrain on (of each source); slices like train[:5000]."}
    )
    streaming: bool = field(default=False, metadata={"help": "Stream the dataset (needs --max_steps)."})
    cache_dir: str | None = field(default=None, metadata={"help": "Where datasets caches downloads."})

    def __post_init__(self) -> None:
        # several sources (--dataset_name a b, a YAML list) are kept as one comma-separated string, which load_data
        # splits again and the run record keeps as written
        if isinstance(self.dataset_name, list | tuple):
            self.dataset_name = ",".join(self.dataset_name)


@dataclass
class ModelArguments:
    _argument_group_name = "model"

    model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "Start from this checkpoint's weights and config (flags override its hyperparameters); "
            "--resume_from_checkpoint continues an interrupted run instead."
        },
    )


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

    def __post_init__(self) -> None:
        if self.push_to_hub and not self.hub_model_id:
            raise UsageError("--push_to_hub needs --hub_model_id (user/name)")


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
        hint = param.annotation  # a class, or a string under ``from __future__ import annotations``
        annotation = hint.__name__ if isinstance(hint, type) else str(hint)
        if annotation.startswith("dict"):
            kind: Any = str
        elif annotation.startswith("list[float]"):
            kind = list[float]
        elif annotation.startswith("list[int]"):
            kind = list[int]
        else:
            kind = {"bool": bool, "int": int, "float": float}.get(annotation.split(" ")[0], str)
        help_text = docs.get(name, "") + ("" if param.default is None else f" (default: {param.default})")
        help_text = help_text.replace("%", "%%")  # argparse formats help with %: a docstring's "i % n" is text
        fields.append((name, kind | None, field(default=None, metadata={"help": help_text})))
    arguments = dataclasses.make_dataclass(f"{config_class.__name__}Arguments", fields)
    arguments._argument_group_name = f"objective ({config_class.__name__}; saved in config.json)"
    return arguments


def _docstring_args(doc: str) -> dict[str, str]:
    section = doc.split("Args:", 1)[-1] if "Args:" in doc else ""
    entries = re.findall(r"^\s{8}(\w+): (.*?)(?=^\s{8}\w+: |\Z)", section, flags=re.M | re.S)
    return {name: " ".join(text.split()) for name, text in entries}


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a default once: not where the help already states it, nor ``None`` (the config's own default)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        help_text = action.help or ""
        if "(default:" in help_text or action.default is None or action.default is argparse.SUPPRESS:
            return help_text
        return super()._get_help_string(action)


def make_parser(*dataclass_types: type, prog: str = "hf-ssl") -> HfArgumentParser:
    """An ``HfArgumentParser`` that takes flags only as written (no abbreviations), named ``prog`` in its usage, in
    which optional booleans (``bool | None``, default ``None``) may also be given as a bare ``--flag`` meaning
    true, as plain boolean fields can."""
    parser = HfArgumentParser(
        dataclass_types,
        prog=prog,
        usage=f"{prog} [--config FILE] [--flag VALUE ...]   (flags by group below)",
        allow_abbrev=False,
        formatter_class=_HelpFormatter,
    )
    parser.add_argument(
        "--config", metavar="FILE", help="YAML or JSON file of flag values; flags given after it override them."
    )
    if "--debug" not in parser._option_string_actions:  # pretrain: TrainingArguments' own --debug says the same
        parser.add_argument("--debug", action="store_true", help="Show the traceback of errors (also HF_SSL_DEBUG=1).")
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


def parse(
    parser: HfArgumentParser, argv: list[str], implied: Callable[[dict[str, Any]], dict[str, Any]] | None = None
) -> tuple[Any, ...]:
    """Parse ``argv`` into the parser's dataclasses; ``--config FILE`` (YAML or JSON) supplies values that flags
    given after it override. Keys and flags must be written out in full. ``implied`` maps the parsed flag values
    to further values (``{flag: value}``) set before the dataclasses are built (and check themselves).

    Raises:
        UsageError: an unreadable config file, or a key of it that is no flag.
    """
    argv = [a for a in argv if a != "--debug"]
    if "--config" in argv:
        at = argv.index("--config")
        if at + 1 >= len(argv):
            raise UsageError("--config needs a file")
        path = argv[at + 1]
        try:
            with open(path) as handle:
                values = yaml.safe_load(handle) if path.endswith((".yaml", ".yml")) else json.load(handle)
        except (OSError, yaml.YAMLError, json.JSONDecodeError) as err:
            raise UsageError(f"--config {path}: cannot read it: {err}") from err
        if not isinstance(values, dict):
            raise UsageError(f"--config {path}: expected a mapping of flag names to values")
        known = {option for action in parser._actions for option in action.option_strings}
        unknown = [key for key in values if f"--{key}" not in known]
        if unknown:
            raise UsageError(f"--config {path}: unknown keys {unknown}; each key must be a flag of this command")
        argv = _as_flags(values) + argv[:at] + argv[at + 2 :]
    if implied is not None:
        argv = _as_flags(implied(vars(parser.parse_known_args(argv)[0]))) + argv
    try:
        *parsed, remaining = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
    except UsageError:
        raise
    except ValueError as err:  # TrainingArguments' own checks of their values
        raise UsageError(str(err).strip().splitlines()[0]) from err
    if remaining:
        raise UsageError(f"unrecognised arguments: {' '.join(remaining)} (see --help)")
    return tuple(p for p in parsed if dataclasses.is_dataclass(p))


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


@dataclass
class PretrainArguments:
    """Everything ``hf-ssl pretrain <objective>`` was given, by group."""

    data: DataArguments
    objective_data: Any
    model: ModelArguments
    training: SSLTrainingArguments
    config_overrides: dict[str, Any]
    probe: ProbeArguments | None = None


def parse_pretrain_args(objective: Objective, argv: list[str]) -> PretrainArguments:
    parser = make_parser(
        ModelArguments,
        DataArguments,
        objective.data_arguments,
        config_arguments(objective.config_class),
        ProbeArguments,
        SSLTrainingArguments,
        prog=f"hf-ssl pretrain {objective.name}",
    )
    parsed = parse(parser, argv, implied=evaluation_schedule)
    model_args, data_args, objective_data, config_args, probe_args, training_args = parsed
    resume = (training_args.resume_from_checkpoint or "").lower()
    if resume in ("true", "yes", "1"):
        training_args.resume_from_checkpoint = True  # the HF habit: the newest complete checkpoint in output_dir
    elif resume in ("false", "no", "0", ""):
        training_args.resume_from_checkpoint = None
    overrides = config_overrides(config_args)
    return PretrainArguments(data_args, objective_data, model_args, training_args, overrides, probe_args)


def optimisation_steps(args: SSLTrainingArguments, num_examples: int | None) -> int:
    """The number of optimisation steps the run will take, checked before training starts.

    Raises:
        UsageError: fewer examples than one batch of all processes, no step at all, or a streamed dataset without
            ``--max_steps``.
    """
    per_device = args.per_device_train_batch_size
    if num_examples is None:
        if args.max_steps <= 0:
            raise UsageError("--streaming needs --max_steps: a streamed dataset has no known length")
        return args.max_steps
    global_batch = per_device * args.world_size
    batches = num_examples // global_batch if args.dataloader_drop_last else math.ceil(num_examples / global_batch)
    if batches < 1:
        raise UsageError(
            f"{num_examples} training examples make no full batch of {per_device} per device x {args.world_size} "
            "processes; lower --per_device_train_batch_size or use more data"
        )
    if args.max_steps > 0:
        return args.max_steps
    steps = math.ceil(batches / args.gradient_accumulation_steps * args.num_train_epochs)
    if steps < 1:
        raise UsageError(f"--num_train_epochs {args.num_train_epochs} gives no optimisation step")
    return steps


def _check_batch_size(args: SSLTrainingArguments, min_batch_size: int) -> None:
    if args.per_device_train_batch_size < min_batch_size:
        raise UsageError(
            f"--per_device_train_batch_size {args.per_device_train_batch_size}: this objective needs at least "
            f"{min_batch_size} examples per batch on each process (the other examples of a batch are its negatives)"
        )


def _resolve_resume(args: SSLTrainingArguments, objective: Objective) -> None:
    """Turn ``--resume_from_checkpoint`` into the folder to resume from, checked before any data is read.

    ``true`` is the newest *complete* ``checkpoint-N`` of ``output_dir`` (a folder half-written by a killed run is
    skipped with a warning naming it); a folder given explicitly must be complete and of this objective.

    Raises:
        UsageError: no complete checkpoint, an incomplete or truncated one, or one of another objective.
    """
    resume = args.resume_from_checkpoint
    if resume is None or resume is False:
        return
    if resume is True:
        found = last_complete_checkpoint(args.output_dir)
        if found is None:
            raise UsageError(f"--resume_from_checkpoint true: no complete checkpoint-* folder in {args.output_dir}")
        args.resume_from_checkpoint = resume = found
        logger.info("resuming from %s", found)
    elif not os.path.isdir(resume):
        raise UsageError(f"--resume_from_checkpoint {resume}: no such folder")
    reason = incomplete_reason(resume)
    if reason is not None:
        raise UsageError(f"--resume_from_checkpoint {resume}: not a complete checkpoint ({reason})")
    model_type = checkpoint_model_type(resume)
    if model_type != objective.config_class.model_type:
        raise UsageError(
            f"--resume_from_checkpoint {resume} is a {model_type!r} checkpoint, not one of {objective.name} "
            f"({objective.config_class.model_type!r})"
        )


def pretrain(objective: Objective, argv: list[str]) -> str:
    """Pretrain ``objective`` as ``argv`` says: parse, prepare, build, train, save. Returns the output folder."""
    args = parse_pretrain_args(objective, argv)
    accumulation = args.training.gradient_accumulation_steps
    if objective.negatives_from_batch and accumulation > 1 and args.training.process_index == 0:
        logger.warning(
            "--gradient_accumulation_steps %d does not add negatives to %s's loss: each micro-batch contrasts only "
            "its own examples; for more negatives raise --per_device_train_batch_size and bound its memory with "
            "--gradient_cache_chunk_size",
            accumulation,
            objective.name,
        )
    set_seed(args.training.seed)
    config = objective.make_config(args.config_overrides, args.model.model_name_or_path)
    prepared, run_info = prepare(objective, args, config)
    model = objective.make_model(config, args.model.model_name_or_path)
    if args.training.resume_from_checkpoint:
        check_checkpoint_fits(args.training.resume_from_checkpoint, model, "--resume_from_checkpoint")
    trainer = build_trainer(objective, args, model, prepared, run_info)
    train(trainer, args.training)
    save(trainer, args.training)
    return args.training.output_dir


def prepare(objective: Objective, args: PretrainArguments, config: Any) -> tuple[PreparedData, RunInfo]:
    """Load the data, let the objective prepare it, and check the run can take at least one step."""
    _resolve_resume(args.training, objective)
    _check_batch_size(args.training, objective.min_batch_size)  # before the data is read and checked
    data = args.data
    dataset_name = data.dataset_name or objective.default_dataset[0]
    dataset = load_data(
        dataset_name,
        data.train_split,
        config_name=data.dataset_config_name,
        streaming=data.streaming,
        cache_dir=data.cache_dir,
        default=objective.default_dataset,
    )
    prepared = objective.prepare_for_run(
        dataset, config, args.objective_data, args.training, args.model.model_name_or_path
    )
    num_examples = None if data.streaming else len(prepared.dataset)
    steps = optimisation_steps(args.training, num_examples)
    logger.info("%s on %s examples: %d optimisation steps", objective.name, num_examples or "streamed", steps)
    run_info = RunInfo(
        objective=objective.name,
        hf_ssl_version=__version__,
        dataset_name=dataset_name,
        dataset_source=data_source(dataset_name, dataset),
        dataset_config_name=data.dataset_config_name,
        train_split=data.train_split,
        columns=prepared.columns,
        num_examples=num_examples,
        num_skipped=prepared.num_skipped,
        modality=objective.modality,
    )
    return prepared, run_info


def build_trainer(
    objective: Objective, args: PretrainArguments, model: Any, prepared: PreparedData, run_info: RunInfo
) -> SSLTrainer:
    callbacks = [RunInfoCallback(run_info), *objective.callbacks(model.config)]
    if isinstance(prepared.collator, SeededCollator):
        callbacks.append(BatchRandomnessCallback(prepared.collator))
    probe = None
    if args.probe is not None and args.probe.enabled:  # its data is loaded and checked now, before training
        probe = OnlineProbe.prepare(args.probe, model, objective.features, prepared.processing_class)
    trainer = SSLTrainer(
        probe=probe,
        model=model,
        args=args.training,
        train_dataset=prepared.dataset,
        eval_dataset=prepared.eval_dataset,
        compute_metrics=prepared.compute_metrics,
        data_collator=prepared.collator,
        processing_class=prepared.processing_class,
        callbacks=callbacks,
    )
    trainer.add_callback(HealthCallback(trainer, run_info))  # health/* logs and collapse warnings (--health_steps)
    return trainer


def train(trainer: SSLTrainer, args: SSLTrainingArguments) -> None:
    result = trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)
    if result.global_step < 1:
        raise UsageError("training ran no optimisation step; nothing was saved")


def save(trainer: SSLTrainer, args: SSLTrainingArguments) -> None:
    """Save the model (and its processing class), push it if asked, and leave the process group cleanly."""
    trainer.save_model()
    if trainer.is_world_process_zero():
        logger.info("saved the model to %s", args.output_dir)
    if args.push_to_hub:
        trainer.push_to_hub()
    # every process waits for the main one to finish writing, then leaves the process group cleanly (a process
    # that exits with gloo's threads still running aborts, and torchrun then fails the whole run)
    trainer.accelerator.wait_for_everyone()
    if trainer.is_world_process_zero():  # the processing class the processes shared is saved with the model now
        shutil.rmtree(os.path.join(args.output_dir, SHARED_PROCESSOR_FOLDER), ignore_errors=True)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def evaluate_command(argv: list[str]) -> dict[str, Any]:
    from hf_ssl.evaluation import evaluate, format_table

    (args,) = parse(make_parser(EvaluationArguments, prog="hf-ssl evaluate"), argv)
    results = evaluate(args)
    print(format_table(results))
    return results


def export_command(argv: list[str]) -> str:
    from hf_ssl.export import export_backbone
    from hf_ssl.hub import push_folder

    # positional MODEL_DIR OUTPUT_DIR, as in `hf-ssl export DIR OUT`
    positional = [a for a in argv[:2] if not a.startswith("--")]
    argv = [f"--{name}={value}" for name, value in zip(("model_dir", "output_dir"), positional, strict=False)] + argv[
        len(positional) :
    ]
    (args,) = parse(make_parser(ExportArguments, prog="hf-ssl export"), argv)
    out = export_backbone(args.model_dir, args.output_dir, eval_file=args.eval_file)
    print(f"exported to {out}")
    if args.push_to_hub:
        url = push_folder(out, args.hub_model_id, token=args.hub_token, private=args.hub_private_repo)
        print(f"pushed to {url}")
    return str(out)


def report_command(argv: list[str]) -> str:
    """``hf-ssl report RUN --output_dir DIR``: the run's page of pictures, with its objective's own pictures."""
    from hf_ssl.evaluation.run_report import ReportArguments, run_record, write_report

    positional = [a for a in argv[:1] if not a.startswith("--")]  # RUN, as in `hf-ssl report RUN`
    argv = [f"--run_dir={value}" for value in positional] + argv[len(positional) :]
    (args,) = parse(make_parser(ReportArguments, prog="hf-ssl report"), argv)
    info = run_record(args.run_dir)
    model_type = checkpoint_model_type(args.run_dir)
    objective = OBJECTIVES.get(info.objective) if info is not None else None
    objective = objective or next((o for o in OBJECTIVES.values() if o.config_class.model_type == model_type), None)
    page = write_report(args, pictures=objective.report_pictures if objective is not None else None)
    print(f"wrote {page}")
    return str(page)


def usage() -> str:
    """The launcher's usage, then the registered objectives and the commands they bring."""
    from hf_ssl_launcher import USAGE

    width = max(len(name) for name in OBJECTIVES)
    lines = [f"  {name.ljust(width)}  {OBJECTIVES[name].summary}" for name in sorted(OBJECTIVES)]
    extra = f"\n\nmore commands: {', '.join(sorted(COMMANDS))}" if COMMANDS else ""
    return f"{USAGE}\n\nobjectives:\n" + "\n".join(lines) + extra


def run(argv: list[str]) -> None:
    """Dispatch ``argv`` (without the program name) to a command."""
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return
    if argv[0] == "--version":
        print(f"hf-ssl {__version__}")
        return
    command, rest = argv[0], argv[1:]
    if command == "pretrain":
        if not rest or rest[0].startswith("-"):
            if rest and rest[0] in ("-h", "--help"):
                print(usage())
                return
            raise UsageError(f"hf-ssl pretrain needs an objective: {', '.join(sorted(OBJECTIVES))}")
        pretrain(get_objective(rest[0]), rest[1:])
        # The trainer, the model and DDP's wrapper with its gloo process group are held in reference cycles: collect
        # them now, while the interpreter is whole. Left to the exit, gloo's worker threads are freed while the
        # interpreter is torn down, and a finished 2-process run can abort ("terminate called without an active
        # exception"), which torchrun reports as a failed run.
        gc.collect()
    elif command == "evaluate":
        evaluate_command(rest)
    elif command == "export":
        export_command(rest)
    elif command == "report":
        report_command(rest)
    elif command in COMMANDS:
        COMMANDS[command](rest)
    else:
        known = ", ".join(["pretrain", "evaluate", "export", "report", *sorted(COMMANDS)])
        raise UsageError(f"unknown command {command!r}; commands: {known} (see hf-ssl --help)")


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time of each message."""

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


def _log_to_stderr() -> None:
    """hf_ssl's own messages to stderr; other libraries keep their own handlers (a root handler would print what
    they log a second time). In a run of several processes only the main one (``RANK`` 0) logs below errors: every
    process prepares the same data and model, so the others would repeat its lines."""
    package = logging.getLogger("hf_ssl")
    if not package.handlers:
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        package.addHandler(handler)
        package.setLevel(logging.INFO if os.environ.get("RANK", "0") == "0" else logging.ERROR)
        package.propagate = False


def main(argv: list[str] | None = None) -> None:
    """The ``hf-ssl`` console script: one line and exit status 2 for a :class:`~hf_ssl.errors.UsageError`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("HF_SSL_DEBUG", "") not in ("", "0")
    _log_to_stderr()
    try:
        run(argv)
    except UsageError as err:
        if debug:
            raise
        message = "; ".join(line.strip() for line in str(err).splitlines() if line.strip())
        print(f"hf-ssl: error: {message}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
