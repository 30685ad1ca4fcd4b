"""The text path shared by every text objective (MLM, SimCSE, ...): tokenizers, checks, tokenisation, default corpus.

- :func:`load_tokenizer` / :func:`train_tokenizer`: a fast tokenizer from a name or path, or trained on the data with
  the ``tokenizers`` library (WordPiece as BERT, or byte-level BPE as RoBERTa), with [CLS]/[SEP] added per sequence.
- :func:`read_text_lines` / :func:`check_text_file`: ``.txt`` files, with undecodable bytes reported by file and line.
- :func:`clean_text_column`: drop empty and whitespace-only rows, and say how many.
- :func:`tokenize_dataset`: ``datasets.map(batched=True)`` (cached), packing lines into full blocks ("pack", as
  transformers' ``run_mlm.py`` ``group_texts`` and BERT's pretraining data) or one truncated sequence per line
  ("line", with its ``length`` for ``group_by_length``).
- :func:`load_default_text`: an embedded English corpus, CPython's ``pydoc_data.topics`` (no download), and
  :func:`load_default_text_classification`, its sentences labelled by topic (the text evaluation task's default).
- :class:`TextDataArguments` (the data flags every text objective shares) and the two steps built on them:
  :func:`prepare_text_rows` (column, checks, cleaning) and :func:`resolve_tokenizer` (load, reuse or train one);
  :func:`use_saved_tokenizer` points a run at a saved tokenizer (a resumed checkpoint's, the main process' copy).
"""

from __future__ import annotations

import dataclasses
import logging
import re
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import datasets
from datasets import ClassLabel, Dataset
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from hf_ssl.data.checks import OnBadExample, check_on_bad_example
from hf_ssl.data.loading import find_column, register_embedded_dataset
from hf_ssl.errors import UsageError, check_choice, check_range

logger = logging.getLogger(__name__)

SPECIAL_TOKENS = {"pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]", "sep_token": "[SEP]"}
MASK_TOKEN = "[MASK]"
TOKENIZE_BATCH_SIZE = 1000


REPLACEMENT_CHARACTER = "\ufffd"
"""What a byte that does not decode becomes when a file is read with ``errors="replace"``: a row holding it is bad."""
NUL = "\x00"
"""Never part of text: a row holding it comes from a binary file, or from UTF-16 read as UTF-8, and is bad."""


def _is_bad_text(text: Any) -> bool:
    """Whether a row's value is a string holding undecodable bytes (U+FFFD) or NUL characters."""
    return isinstance(text, str) and (REPLACEMENT_CHARACTER in text or NUL in text)


@dataclass
class TextDataArguments:
    """The data flags every text objective shares (``hf-ssl pretrain mlm|simcse ...``); objectives may subclass it.

    Used by :func:`prepare_text_rows` (column, checks, cleaning), :func:`resolve_tokenizer` (which tokenizer) and
    :func:`tokenize_dataset` (``max_seq_length``, ``packing``, ``preprocessing_num_workers``).
    """

    text_column: str | None = field(
        default=None,
        metadata={"help": "Text column (default: the first string column named text/sentence/content/document)."},
    )
    tokenizer_name: str | None = field(
        default=None,
        metadata={
            "help": "Tokenizer: a local folder or Hub id (AutoTokenizer). Default: the tokenizer of "
            "--model_name_or_path, else one trained on the training text (as --train_tokenizer)."
        },
    )
    train_tokenizer: bool = field(
        default=False,
        metadata={"help": "Train a tokenizer of --vocab_size on the training text (saved with the run)."},
    )
    vocab_size: int = field(
        default=8000, metadata={"help": "Vocabulary size of a trained tokenizer, special tokens included."}
    )
    tokenizer_kind: Literal["wordpiece", "bpe"] = field(
        default="wordpiece",
        metadata={"help": "Trained tokenizer: 'wordpiece' (BERT's, lower-cased) or 'bpe' (byte-level, RoBERTa's)."},
    )
    max_seq_length: int = field(
        default=128, metadata={"help": "Tokens per sequence, special tokens included (longer lines are cut)."}
    )
    packing: bool = field(
        default=True,
        metadata={
            "help": "Pack the lines into full blocks of --max_seq_length (sentences cross block boundaries, as in "
            "BERT). --packing false: one truncated sequence per line, with a 'length' column for "
            "--train_sampling_strategy group_by_length."
        },
    )
    on_bad_example: OnBadExample = field(
        default="skip",
        metadata={
            "help": "Rows that are not text (missing or non-string values, undecodable bytes read as U+FFFD, NUL "
            "characters): "
            "'skip' drops and counts them; 'error' stops before training naming the first. Empty lines are "
            "always dropped and counted."
        },
    )
    preprocessing_num_workers: int | None = field(
        default=None, metadata={"help": "Processes for tokenisation (datasets.map num_proc)."}
    )

    def __post_init__(self) -> None:
        check_choice("--tokenizer_kind", self.tokenizer_kind, ("wordpiece", "bpe"))
        check_on_bad_example(self.on_bad_example)
        check_range("--vocab_size", self.vocab_size, 16)
        check_range("--max_seq_length", self.max_seq_length, 3)
        if self.preprocessing_num_workers is not None:
            check_range("--preprocessing_num_workers", self.preprocessing_num_workers, 1)
        if self.train_tokenizer and self.tokenizer_name:
            raise UsageError("give --tokenizer_name or --train_tokenizer, not both")


# --------------------------------------------------------------------------------------------------------------------
# Tokenizers
# --------------------------------------------------------------------------------------------------------------------


TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "sentencepiece.bpe.model",
    "spiece.model",
    "chat_template.jinja",
)
"""The files a saved tokenizer may consist of (``save_pretrained`` of the usual tokenizer classes)."""


def load_tokenizer(name_or_path: str | Path) -> PreTrainedTokenizerBase:
    """The tokenizer of a Hub id or folder (``AutoTokenizer``), preferring the fast (Rust) implementation.

    Raises:
        UsageError: nothing loadable there, or a folder without tokenizer files (transformers would otherwise build
            an empty tokenizer from a model's ``config.json`` alone).
    """
    path = Path(name_or_path)
    if path.is_dir() and not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise UsageError(
            f"tokenizer: {str(name_or_path)!r} holds no tokenizer files ({', '.join(TOKENIZER_FILES[:2])})"
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(name_or_path))
    except (OSError, ValueError) as error:
        raise UsageError(f"tokenizer: could not load a tokenizer from {str(name_or_path)!r}: {error}") from error
    if len(tokenizer) <= len(tokenizer.all_special_ids):
        raise UsageError(f"tokenizer: {str(name_or_path)!r} has no vocabulary besides its special tokens")
    if not tokenizer.is_fast:
        logger.warning(
            "tokenizer %s is not a fast tokenizer: word ids (whole-word masking) are unavailable", name_or_path
        )
    return tokenizer


def train_tokenizer(
    texts: Iterable[str],
    vocab_size: int,
    kind: str = "wordpiece",
    min_frequency: int = 2,
    lowercase: bool = True,
    model_max_length: int = 512,
) -> PreTrainedTokenizerFast:
    """Train a tokenizer on ``texts`` with the ``tokenizers`` library; the same texts give the same vocabulary.

    Both kinds add ``[CLS] ... [SEP]`` to each sequence (``[CLS] A [SEP] B [SEP]`` for pairs, segment ids 0/1) and
    know ``[PAD]``, ``[UNK]``, ``[CLS]``, ``[SEP]``, ``[MASK]`` (ids 0-4, in that order).

    Determinism: the trainer breaks ties between equally frequent merges by the ids of the pieces, and its WordPiece
    flavour numbers the ``##`` continuation pieces in the order it walks a hash map of the words, which Rust seeds at
    random in every process; so two processes (or two calls) trained different vocabularies on the same text. Here the
    continuation pieces are numbered beforehand (sorted, right after the special tokens), which leaves nothing to
    chance (byte-level BPE knows every piece of its alphabet from the start and needs no help).

    Args:
        texts: the training text, one string per line or document (a sequence, or an iterator, which is read into a
            list: WordPiece reads the text twice).
        vocab_size: the vocabulary size, special tokens included.
        kind: ``"wordpiece"``, BERT's (Unicode normalisation, optional lower-casing, punctuation split, ``##``
            continuation pieces); or ``"bpe"``, byte-level BPE as GPT-2/RoBERTa (no unknown tokens).
        min_frequency: pieces seen fewer times are not merged into the vocabulary.
        lowercase: lower-case (and strip accents) before WordPiece; byte-level BPE keeps case regardless.
        model_max_length: the longest sequence the tokenizer reports its model accepts.

    Returns:
        A ``PreTrainedTokenizerFast`` (``save_pretrained`` writes ``tokenizer.json``; ``AutoTokenizer`` reloads it).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    check_choice("kind", kind, ("wordpiece", "bpe"))
    specials = [*SPECIAL_TOKENS.values(), MASK_TOKEN]
    # byte-level BPE starts from all 256 bytes; WordPiece from the characters it sees
    check_range("vocab_size", vocab_size, 16 if kind == "wordpiece" else 256 + len(specials))
    if kind == "wordpiece":
        if iter(texts) is texts:  # an iterator: read twice below
            texts = list(texts)
        tokenizer = _wordpiece_pipeline(Tokenizer(models.WordPiece(unk_token=SPECIAL_TOKENS["unk_token"])), lowercase)
        continuation = _continuation_pieces(texts, tokenizer)
        trainer = trainers.WordPieceTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=specials + continuation,
            show_progress=False,
        )
        tokenizer.train_from_iterator(_non_empty(texts), trainer=trainer)
        # the continuation pieces were handed over as special tokens only to fix their ids: rebuild the tokenizer
        # from the trained vocabulary with just the real special tokens
        vocab = tokenizer.get_vocab(with_added_tokens=False)
        model = models.WordPiece(vocab=vocab, unk_token=SPECIAL_TOKENS["unk_token"], max_input_chars_per_word=100)
        tokenizer = _wordpiece_pipeline(Tokenizer(model), lowercase)
        tokenizer.add_special_tokens(specials)
    else:
        tokenizer = Tokenizer(models.BPE(unk_token=None))
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
        tokenizer.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=specials,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tokenizer.train_from_iterator(_non_empty(texts), trainer=trainer)
    cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, mask_token=MASK_TOKEN, model_max_length=model_max_length, **SPECIAL_TOKENS
    )


def _wordpiece_pipeline(tokenizer: Any, lowercase: bool) -> Any:
    """``tokenizer`` (a ``tokenizers.Tokenizer`` of a WordPiece model) with BERT's normaliser, pre-tokenizer and
    decoder."""
    from tokenizers import decoders, normalizers, pre_tokenizers

    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=lowercase, strip_accents=lowercase or None)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece(prefix="##")
    return tokenizer


def _continuation_pieces(texts: Iterable[str], pipeline: Any) -> list[str]:
    """The ``##c`` pieces WordPiece training adds: one per character that follows another within a word of the
    normalised, pre-tokenised ``texts``, in code point order. The words are counted by a WordLevel trainer (the
    ``tokenizers`` library's own fast, parallel pass over the text)."""
    from tokenizers import Tokenizer, models, trainers

    counter = Tokenizer(models.WordLevel(unk_token=SPECIAL_TOKENS["unk_token"]))
    counter.normalizer, counter.pre_tokenizer = pipeline.normalizer, pipeline.pre_tokenizer
    counter.train_from_iterator(
        _non_empty(texts), trainer=trainers.WordLevelTrainer(vocab_size=2**31 - 1, show_progress=False)
    )
    characters = {character for word in counter.get_vocab() for character in word[1:]}
    return [f"##{character}" for character in sorted(characters)]


MAX_TRAINING_WORD_CHARS = 100
"""Longer runs of non-space characters are left out of tokenizer training: WordPiece reads such a word as one
``[UNK]`` anyway (``max_input_chars_per_word``), and the trainers' merge loops take time quadratic in a word's length
(a single word of 100,000 characters kept WordPiece training busy for 22 s on a 2-core machine)."""
_OVERLONG_WORD = re.compile(rf"\S{{{MAX_TRAINING_WORD_CHARS + 1},}}")


def _non_empty(texts: Iterable[str]) -> Iterator[str]:
    """The texts a tokenizer trains on: blank ones left out, and words longer than :data:`MAX_TRAINING_WORD_CHARS`
    cut out of the others."""
    for text in texts:
        if text and text.strip():
            if _OVERLONG_WORD.search(text):
                text = _OVERLONG_WORD.sub(" ", text)
            yield text


def special_tokens_around(tokenizer: PreTrainedTokenizerBase) -> tuple[list[int], list[int]]:
    """The ids the tokenizer's post-processor puts before and after a single sequence (BERT: ``[CLS]`` / ``[SEP]``;
    RoBERTa: ``<s>`` / ``</s>``), found by encoding one word with and without special tokens."""
    with_special = tokenizer("a")["input_ids"]
    bare = tokenizer("a", add_special_tokens=False)["input_ids"]
    for start in range(len(with_special) - len(bare) + 1):
        if with_special[start : start + len(bare)] == bare:
            return with_special[:start], with_special[start + len(bare) :]
    raise UsageError(f"cannot find where tokenizer {tokenizer.name_or_path!r} adds its special tokens")


# --------------------------------------------------------------------------------------------------------------------
# Files and columns
# --------------------------------------------------------------------------------------------------------------------


def read_text_lines(path: str | Path, encoding: str = "utf-8") -> list[str]:
    """The lines of a text file, without their line endings.

    Raises:
        UsageError: the file is missing, or a line does not decode; the message names the file and the line.
    """
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"text file not found: {path}")
    lines = []
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                lines.append(raw.decode(encoding).rstrip("\r\n"))
            except UnicodeDecodeError as error:
                raise UsageError(
                    f"{path}: line {number} is not valid {encoding} (byte {error.start} of the line: "
                    f"{raw[error.start : error.start + 4]!r}); re-encode the file as {encoding}"
                ) from None
    return lines


def check_text_file(path: str | Path, encoding: str = "utf-8") -> int:
    """Check that every line of ``path`` decodes (before handing it to ``datasets``' text loader, whose error names
    neither file nor line). Returns the number of lines.

    Raises:
        UsageError: as :func:`read_text_lines`.
    """
    return len(read_text_lines(path, encoding))


def clean_text_column(ds: Dataset, column: str) -> tuple[Dataset, int]:
    """Drop the rows whose ``column`` is empty, whitespace-only or missing.

    Returns:
        ``(dataset, number of rows dropped)``; the count is logged too.

    Raises:
        UsageError: ``column`` is not a column of ``ds``.
    """
    if column not in ds.column_names:
        raise UsageError(f"text column {column!r} not found; the data has columns {ds.column_names}")
    before = len(ds)
    ds = ds.filter(
        lambda batch: [isinstance(t, str) and bool(t.strip()) for t in batch[column]],
        batched=True,
        desc="Dropping empty lines",
    )
    dropped = before - len(ds)
    if dropped:
        logger.info("dropped %d of %d rows whose %r is empty or whitespace", dropped, before, column)
    return ds, dropped


def prepare_text_rows(ds: Dataset, args: TextDataArguments) -> tuple[Dataset, str, int]:
    """The rows a text objective trains on: the text column found, bad rows handled, empty ones dropped.

    Args:
        ds: the loaded split (map-style).
        args: the shared text flags (``text_column``, ``on_bad_example``).

    Returns:
        ``(dataset, text column, number of rows dropped)``: rows holding undecodable bytes (U+FFFD, see
        :data:`REPLACEMENT_CHARACTER`) or NUL characters with ``on_bad_example="skip"``, and empty / whitespace-only
        / missing ones.

    Raises:
        UsageError: no text column (the message lists the columns), a streamed dataset, a bad row with
            ``on_bad_example="error"`` (named by its index), or no text left at all.
    """
    if not isinstance(ds, Dataset):
        raise UsageError("text objectives need a map-style dataset: --streaming is not supported for them yet")
    column = find_column(ds, "text", args.text_column)
    bad = _first_bad_row(ds, column)
    skipped = 0
    if bad is not None:
        if args.on_bad_example == "error":
            index, text = bad
            raise UsageError(
                f"row {index} of column {column!r} (line {index + 1} of a text file) holds bytes that did not decode "
                f"(U+FFFD) or NUL characters: {text[:60]!r}; fix the file's encoding or pass --on_bad_example skip"
            )
        before = len(ds)
        ds = ds.filter(
            lambda batch: [not _is_bad_text(t) for t in batch[column]],
            batched=True,
            desc="Dropping rows with undecodable bytes",
        )
        skipped = before - len(ds)
        logger.warning(
            "skipped %d of %d rows whose %r holds undecodable bytes (U+FFFD) or NUL characters", skipped, before, column
        )
    ds, empty = clean_text_column(ds, column)
    if len(ds) == 0:
        raise UsageError(f"column {column!r} holds no text: all {skipped + empty} rows are empty or unusable")
    return ds, column, skipped + empty


def _first_bad_row(ds: Dataset, column: str) -> tuple[int, str] | None:
    offset = 0
    for batch in ds.select_columns([column]).iter(batch_size=TOKENIZE_BATCH_SIZE):
        for i, text in enumerate(batch[column]):
            if _is_bad_text(text):
                return offset + i, text
        offset += len(batch[column])
    return None


def resolve_tokenizer(
    args: TextDataArguments, ds: Dataset, column: str, checkpoint: str | None = None
) -> tuple[PreTrainedTokenizerBase, str]:
    """The tokenizer a text run uses, in this order: ``--tokenizer_name``; one trained on ``ds[column]`` with
    ``--train_tokenizer``; the tokenizer saved with ``checkpoint`` (``--model_name_or_path``); else one trained on the
    text (logged), so a run needs no download.

    A trained tokenizer (:func:`train_tokenizer`, ``args.tokenizer_kind``, ``args.vocab_size``) reports
    ``args.max_seq_length`` as its ``model_max_length``.

    Returns:
        ``(tokenizer, where it came from in words)``.

    Raises:
        UsageError: an unloadable tokenizer; ``--train_tokenizer`` with a checkpoint (its embeddings belong to another
            vocabulary); a checkpoint without a tokenizer and no ``--tokenizer_name``.
    """
    if args.tokenizer_name:
        return load_tokenizer(args.tokenizer_name), f"--tokenizer_name {args.tokenizer_name}"
    if args.train_tokenizer and checkpoint:
        raise UsageError(
            f"--train_tokenizer with --model_name_or_path {checkpoint}: the checkpoint's embeddings belong to its own "
            "vocabulary; drop --train_tokenizer (its tokenizer is used) or name one with --tokenizer_name"
        )
    if checkpoint and not args.train_tokenizer:
        try:
            return load_tokenizer(checkpoint), f"the tokenizer of {checkpoint}"
        except UsageError as error:
            raise UsageError(
                f"--model_name_or_path {checkpoint} has no tokenizer; name one with --tokenizer_name ({error})"
            ) from error
    if not args.train_tokenizer:
        logger.info(
            "no --tokenizer_name: training a %s tokenizer of %d pieces on the text",
            args.tokenizer_kind,
            args.vocab_size,
        )
    texts = ds[column]  # a lazy column, read as often as the training needs, never held as a whole in memory
    tokenizer = train_tokenizer(texts, args.vocab_size, kind=args.tokenizer_kind, model_max_length=args.max_seq_length)
    return tokenizer, f"a {args.tokenizer_kind} tokenizer of {len(tokenizer)} pieces trained on the training text"


def use_saved_tokenizer(args: TextDataArguments, folder: str) -> TextDataArguments:
    """``args`` that make :func:`resolve_tokenizer` load the tokenizer saved in ``folder`` (the checkpoint a run
    resumes from, or the copy the main process saved for the others) rather than train or choose one: a text
    objective's :attr:`~hf_ssl.objectives.Objective.use_saved_processor`."""
    return dataclasses.replace(args, tokenizer_name=str(folder), train_tokenizer=False)


# --------------------------------------------------------------------------------------------------------------------
# Tokenisation
# --------------------------------------------------------------------------------------------------------------------


def tokenize_dataset(
    ds: Dataset,
    tokenizer: PreTrainedTokenizerBase,
    column: str,
    max_seq_length: int,
    mode: str = "pack",
    num_proc: int | None = None,
    keep_word_ids: bool = False,
) -> Dataset:
    """Tokenise ``ds[column]`` with ``datasets.map(batched=True)`` (cached by ``datasets`` when ``ds`` comes from
    files), removing the original columns.

    Modes:
        ``"pack"``: the lines are tokenised without special tokens, concatenated in order, and cut into blocks of
            ``max_seq_length - n_special`` tokens, each wrapped in the tokenizer's special tokens (``[CLS] ... [SEP]``)
            so every block is exactly ``max_seq_length`` long. Blocks are formed within each map batch of 1,000
            lines: the remainder of a batch is kept as one shorter last block (the collator pads it), not dropped
            (``run_mlm.py``'s ``group_texts`` drops it). Sentences run across block boundaries, as in BERT.
        ``"line"``: one sequence per line with special tokens, truncated to ``max_seq_length`` (the rest of a longer
            line is dropped; how many lines were truncated is logged), plus a ``length`` column for
            ``TrainingArguments(group_by_length=True)``.

    Args:
        ds: the dataset.
        tokenizer: a fast tokenizer when ``keep_word_ids``.
        column: the text column (clean it first with :func:`clean_text_column`).
        max_seq_length: tokens per sequence, special tokens included.
        mode: ``"pack"`` or ``"line"``.
        num_proc: processes for ``map``.
        keep_word_ids: keep a ``word_ids`` column (the word index of each token within its sequence, ``None`` for
            special tokens), which whole-word masking needs.

    Returns:
        A dataset with ``input_ids``, ``attention_mask``, ``token_type_ids`` (if the tokenizer uses them), and
        ``word_ids`` / ``length`` as above.
    """
    check_choice("mode", mode, ("pack", "line"))
    if column not in ds.column_names:
        raise UsageError(f"text column {column!r} not found; the data has columns {ds.column_names}")
    prefix, suffix = special_tokens_around(tokenizer)
    check_range("max_seq_length", max_seq_length, len(prefix) + len(suffix) + 1)
    if keep_word_ids and not tokenizer.is_fast:
        raise UsageError("keep_word_ids (whole-word masking) needs a fast tokenizer")
    with_types = "token_type_ids" in tokenizer.model_input_names
    kwargs: dict[str, Any] = {
        "batched": True,
        "batch_size": TOKENIZE_BATCH_SIZE,
        "num_proc": num_proc,
        "remove_columns": ds.column_names,
    }
    if mode == "pack":
        block = max_seq_length - len(prefix) - len(suffix)

        def pack(batch: dict[str, list]) -> dict[str, list]:
            encoded = tokenizer(batch[column], add_special_tokens=False, verbose=False)  # long lines are cut below
            ids: list[int] = []
            words: list[int] = []
            for i, line_ids in enumerate(encoded["input_ids"]):
                offset = words[-1] + 1 if words else 0  # word ids keep counting across lines
                ids.extend(line_ids)
                if keep_word_ids:
                    words.extend(offset + w for w in encoded.word_ids(i))
            out: dict[str, list] = {"input_ids": [], "attention_mask": []}
            if keep_word_ids:
                out["word_ids"] = []
            for start in range(0, len(ids), block):
                chunk = prefix + ids[start : start + block] + suffix
                out["input_ids"].append(chunk)
                out["attention_mask"].append([1] * len(chunk))
                if keep_word_ids:
                    piece = words[start : start + block]
                    out["word_ids"].append([None] * len(prefix) + [w - piece[0] for w in piece] + [None] * len(suffix))
            if with_types:
                out["token_type_ids"] = [[0] * len(chunk) for chunk in out["input_ids"]]
            return out

        return ds.map(pack, desc=f"Tokenising and packing into blocks of {max_seq_length}", **kwargs)

    def per_line(batch: dict[str, list]) -> dict[str, list]:
        encoded = tokenizer(batch[column], truncation=True, max_length=max_seq_length)
        out = {
            key: encoded[key] for key in ("input_ids", "attention_mask") + (("token_type_ids",) if with_types else ())
        }
        out["length"] = [len(ids) for ids in encoded["input_ids"]]
        out["truncated"] = [bool(e.overflowing) for e in encoded.encodings]
        if keep_word_ids:
            out["word_ids"] = [encoded.word_ids(i) for i in range(len(encoded["input_ids"]))]
        return out

    tokenized = ds.map(per_line, desc=f"Tokenising lines (truncated to {max_seq_length} tokens)", **kwargs)
    truncated = sum(tokenized["truncated"])
    if truncated:
        logger.warning(
            "%d of %d lines were longer than max_seq_length=%d tokens and were truncated (their end is dropped)",
            truncated,
            len(tokenized),
            max_seq_length,
        )
    return tokenized.remove_columns("truncated")


# --------------------------------------------------------------------------------------------------------------------
# The embedded default corpus
# --------------------------------------------------------------------------------------------------------------------

_HEADING_RULE = re.compile(r"^[*=\-~^]{3,}$")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'(])")
TEST_TOPIC_FRACTION = 5  # one topic in five, chosen by a hash of its name, is the test split


def _prose_paragraphs(text: str) -> Iterator[str]:
    """The prose paragraphs of a pydoc topic: no headings, code, grammar rules or indented examples."""
    for block in re.split(r"\n\s*\n", text):
        lines = block.split("\n")
        if lines[0].startswith((" ", "\t")) or any(
            _HEADING_RULE.match(line.strip()) or line.startswith(">>>") for line in lines
        ):
            continue  # indented (code, grammar, examples), an interactive example, or a heading with its underline
        paragraph = " ".join(line.strip() for line in lines).strip()
        words = len(paragraph.split())
        if (words >= 4 and not paragraph.endswith(":")) or words >= 12:  # short lead-ins to code blocks end in ":"
            yield paragraph


def default_text_rows(unit: str = "sentence") -> dict[str, list[dict[str, str]]]:
    """The rows of :func:`load_default_text`, per split: ``{"train": [{"text", "topic"}, ...], "test": [...]}``."""
    from pydoc_data.topics import topics

    check_choice("unit", unit, ("sentence", "paragraph"))
    rows: dict[str, list[dict[str, str]]] = {"train": [], "test": []}
    for topic in sorted(topics):
        split = "test" if zlib.crc32(topic.encode()) % TEST_TOPIC_FRACTION == 0 else "train"
        for paragraph in _prose_paragraphs(topics[topic]):
            pieces = _SENTENCE_END.split(paragraph) if unit == "sentence" else [paragraph]
            rows[split].extend({"text": piece, "topic": topic} for piece in pieces if len(piece.split()) >= 3)
    return rows


DEFAULT_TEXT_DATASET = "pydoc-topics"
"""The name of the embedded text corpus (``--dataset_name pydoc-topics`` or no ``--dataset_name``)."""
DEFAULT_TEXT_CLASSIFICATION_DATASET = "pydoc-topics-classification"
CLASSIFICATION_MIN_SENTENCES = 50  # topics with at least this many sentences become classes


def _select_split(rows: dict[str, list[dict[str, Any]]], split: str, name: str, features=None) -> Dataset:
    """``split`` of ``rows`` in the datasets library's syntax (``"train"``, ``"train[:500]"``, ``"train+test"``)."""
    try:
        parts = datasets.ReadInstruction.from_spec(split).to_absolute({k: len(v) for k, v in rows.items()})
    except (ValueError, AssertionError) as error:
        raise UsageError(f"split must be one of 'train', 'test' (the embedded {name!r} dataset): {error}") from None
    selected = [row for p in parts for row in rows[p.splitname][p.from_ : p.to]]
    return Dataset.from_list(selected, features=features)


def load_default_text(split: str = "train", unit: str = "sentence") -> Dataset:
    """An English corpus that ships with the interpreter: the prose of CPython's ``pydoc_data.topics`` (the
    language reference's topics, PSF licence), without its code and grammar blocks. No download.

    Args:
        split: ``"train"`` or ``"test"`` (slices as in ``datasets``: ``"train[:500]"``): whole topics go to one split
            (one in five, chosen by a CRC32 of the topic name, to test), so the test sentences come from topics never
            seen in training. The split is fixed for a given Python version (the topics text follows the
            interpreter's documentation).
        unit: ``"sentence"`` (split at sentence ends) or ``"paragraph"``.

    Returns:
        A dataset with columns ``text`` and ``topic``.
    """
    return _select_split(default_text_rows(unit), split, DEFAULT_TEXT_DATASET)


def load_default_text_classification(split: str = "train") -> Dataset:
    """A small labelled text set that ships with the interpreter: the sentences of :func:`load_default_text` whose
    topic has at least 50 of them (about ten topics such as ``compound``, ``types``, ``import``), labelled by topic.

    Unlike the pretraining corpus, the split is per sentence (one in five, by a CRC32 of the text, to test), so both
    splits hold every class. A quick offline check of text features, not a benchmark: the classes are unbalanced,
    and its sentences are also those of the default pretraining corpus (without labels).

    Args:
        split: ``"train"`` or ``"test"`` (slices allowed).

    Returns:
        A dataset with columns ``text`` and ``label`` (a ``ClassLabel`` of the topic names).
    """
    rows = [row for part in default_text_rows("sentence").values() for row in part]
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["topic"]] = counts.get(row["topic"], 0) + 1
    names = sorted(topic for topic, count in counts.items() if count >= CLASSIFICATION_MIN_SENTENCES)
    by_split: dict[str, list[dict[str, Any]]] = {"train": [], "test": []}
    for row in rows:
        if row["topic"] in names:
            part = "test" if zlib.crc32(row["text"].encode()) % TEST_TOPIC_FRACTION == 0 else "train"
            by_split[part].append({"text": row["text"], "label": names.index(row["topic"])})
    features = datasets.Features({"text": datasets.Value("string"), "label": ClassLabel(names=names)})
    return _select_split(by_split, split, DEFAULT_TEXT_CLASSIFICATION_DATASET, features)


register_embedded_dataset(DEFAULT_TEXT_DATASET, load_default_text)
register_embedded_dataset(DEFAULT_TEXT_CLASSIFICATION_DATASET, load_default_text_classification)
