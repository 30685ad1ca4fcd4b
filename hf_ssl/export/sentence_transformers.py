"""Write a text encoder as a sentence-transformers model folder, which ``SentenceTransformer(path)`` loads without
``hf_ssl`` and which is at the same time a plain ``AutoModel`` / ``AutoTokenizer`` folder.

The layout is sentence-transformers' long-standing one (the one Hub models such as
``sentence-transformers/all-MiniLM-L6-v2`` use, read by sentence-transformers 2.x to 6.x): the transformer module at
the folder's root (``config.json``, ``model.safetensors``, tokenizer files, ``sentence_bert_config.json``), then
``modules.json`` naming the modules in order, ``1_Pooling/config.json``, and optionally ``2_Normalize``. This module
knows no objective: the caller passes the encoder, its tokenizer and the pooling.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from hf_ssl.backbones.sentence_transformers import POOLING_MODES
from hf_ssl.errors import check_choice

SENTENCE_TRANSFORMERS_FILES = (
    "modules.json",
    "sentence_bert_config.json",
    "config_sentence_transformers.json",
    "1_Pooling",
    "2_Normalize",
)
"""What :func:`save_sentence_transformer` writes besides the encoder's and tokenizer's own files."""

TRANSFORMERS_FILES = (
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "sentencepiece.bpe.model",
    "spiece.model",
    "chat_template.jinja",
)
"""The names ``save_pretrained`` of an encoder and its tokenizer may write."""


def save_sentence_transformer(
    encoder: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    output_dir: str | Path,
    pooling: str,
    max_seq_length: int,
    normalize: bool = False,
    similarity_fn_name: str = "cosine",
) -> Path:
    """Write ``encoder`` (+ ``tokenizer``) as a sentence-transformers folder: Transformer -> Pooling (-> Normalize).

    ``SentenceTransformer(output_dir).encode(sentences)`` then gives ``pooling`` over the encoder's
    ``last_hidden_state`` of each sentence truncated to ``max_seq_length`` tokens (L2-normalised with
    ``normalize``); ``AutoModel.from_pretrained(output_dir)`` gives the encoder.

    Args:
        encoder: a transformers encoder (``BertModel``, ...), saved with its own ``config.json`` so that
            ``AutoModel`` needs nothing else.
        tokenizer: its tokenizer.
        output_dir: the folder to write (created if needed).
        pooling: ``"cls"`` (first token), ``"mean"`` (mean over non-padding tokens) or ``"max"``.
        max_seq_length: tokens per sentence, special tokens included: the encoder's own limit
            (:func:`~hf_ssl.backbones.transformers.max_sequence_length`), as sentence-transformers sets it for a
            plain encoder, so that users' sentences are read whole; a training crop here would cut them silently.
        normalize: add a ``Normalize`` module (unit-length embeddings).
        similarity_fn_name: the model's similarity (``"cosine"``, ``"dot"``, ...), read by ``model.similarity``.

    Returns:
        The folder.
    """
    check_choice("pooling", pooling, tuple(POOLING_MODES))
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    encoder.save_pretrained(output_dir)
    tokenizer.model_max_length = max_seq_length  # sentence-transformers >= 6 reads the length from the tokenizer
    tokenizer.save_pretrained(output_dir)
    hidden_size = encoder.config.hidden_size if hasattr(encoder.config, "hidden_size") else encoder.config.dim
    modules: list[dict[str, Any]] = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    pooling_config = {
        "word_embedding_dimension": hidden_size,
        **{flag: mode == pooling for mode, flag in POOLING_MODES.items()},
        "pooling_mode_mean_sqrt_len_tokens": False,
        "pooling_mode_weightedmean_tokens": False,
        "pooling_mode_lasttoken": False,
        "include_prompt": True,
    }
    _write_json(output_dir / "1_Pooling" / "config.json", pooling_config)
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
        (output_dir / "2_Normalize").mkdir(exist_ok=True)
    _write_json(output_dir / "modules.json", modules)
    _write_json(output_dir / "sentence_bert_config.json", {"max_seq_length": max_seq_length, "do_lower_case": False})
    _write_json(
        output_dir / "config_sentence_transformers.json",
        {"prompts": {}, "default_prompt_name": None, "similarity_fn_name": similarity_fn_name},
    )
    return output_dir


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
