"""The shared text path: tokenizers, file checks, cleaning, tokenisation modes, and the embedded default corpus."""

import logging
from functools import cache
from pathlib import Path

import pytest
from datasets import Dataset
from transformers import AutoTokenizer

from hf_ssl.data.text import (
    clean_text_column,
    load_default_text,
    load_tokenizer,
    read_text_lines,
    special_tokens_around,
    tokenize_dataset,
    train_tokenizer,
)
from hf_ssl.errors import UsageError

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
BERT_TOKENIZER = SHARED_DATA / "tokenizers" / "bert-base-uncased"
ENWIKI = SHARED_DATA / "text" / "enwiki_sentences.txt"


@cache
def tiny_wordpiece():
    """A 300-piece WordPiece tokenizer trained on the default corpus (small enough that words split into pieces)."""
    return train_tokenizer(load_default_text("train")["text"], vocab_size=300)


@pytest.mark.parametrize("kind", ["wordpiece", "bpe"])
def test_train_tokenizer_adds_cls_sep_and_round_trips(kind, tmp_path):
    texts = load_default_text("train")["text"]
    tokenizer = train_tokenizer(texts, vocab_size=400, kind=kind)
    assert 300 < len(tokenizer) <= 400
    assert tokenizer.convert_ids_to_tokens(list(range(5))) == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert (tokenizer.pad_token_id, tokenizer.mask_token_id) == (0, 4)
    ids = tokenizer("The import statement binds names.")["input_ids"]
    assert ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.sep_token_id
    assert special_tokens_around(tokenizer) == ([tokenizer.cls_token_id], [tokenizer.sep_token_id])
    pair = tokenizer("first part", "second part")
    assert pair["input_ids"].count(tokenizer.sep_token_id) == 2
    decoded = tokenizer.decode(ids, skip_special_tokens=True)
    assert decoded.replace(" ", "").lower() == "theimportstatementbindsnames."
    tokenizer.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    assert again("The import statement binds names.")["input_ids"] == ids
    assert again.mask_token == "[MASK]"


def test_train_tokenizer_validates_its_arguments():
    with pytest.raises(UsageError, match="kind must be one of 'wordpiece', 'bpe'"):
        train_tokenizer(["a b c"], vocab_size=100, kind="unigram")
    with pytest.raises(UsageError, match="vocab_size must be >= 16"):
        train_tokenizer(["a b c"], vocab_size=3)


def test_load_tokenizer_reads_a_folder_and_reports_a_bad_path(tmp_path):
    with pytest.raises(UsageError, match="could not load a tokenizer from"):
        load_tokenizer(tmp_path / "nothing-here")
    if not BERT_TOKENIZER.exists():
        pytest.skip(f"real data not available: {BERT_TOKENIZER} is absent (see ../shared/data/README.md)")
    tokenizer = load_tokenizer(BERT_TOKENIZER)
    assert tokenizer.is_fast and len(tokenizer) == 30522 and tokenizer.mask_token == "[MASK]"


def test_read_text_lines_names_file_and_line_of_undecodable_bytes(tmp_path):
    good = tmp_path / "good.txt"
    good.write_text("first line\nsecond line\r\nthird\n", encoding="utf-8")
    assert read_text_lines(good) == ["first line", "second line", "third"]
    bad = tmp_path / "bad.txt"
    bad.write_bytes("ok line\nalso fine \u00e9\n".encode() + b"caf\xe9 latin-1\nlast\n")
    with pytest.raises(UsageError, match=r"bad\.txt: line 3 is not valid utf-8"):
        read_text_lines(bad)
    with pytest.raises(UsageError, match="text file not found"):
        read_text_lines(tmp_path / "missing.txt")


def test_clean_text_column_drops_blank_rows_and_counts_them(caplog):
    ds = Dataset.from_dict({"text": ["keep me", "", "   ", "\t\n", "keep me too", None], "id": list(range(6))})
    with caplog.at_level(logging.INFO, logger="hf_ssl.data.text"):
        cleaned, dropped = clean_text_column(ds, "text")
    assert dropped == 4
    assert cleaned["text"] == ["keep me", "keep me too"] and cleaned["id"] == [0, 4]
    assert "dropped 4 of 6 rows" in caplog.text
    with pytest.raises(UsageError, match="text column 'sentence' not found"):
        clean_text_column(ds, "sentence")


def test_pack_mode_makes_full_blocks_with_special_tokens_and_loses_no_token():
    tokenizer = tiny_wordpiece()
    ds = load_default_text("train").select(range(120))
    packed = tokenize_dataset(ds, tokenizer, "text", max_seq_length=32, mode="pack", keep_word_ids=True)
    assert set(packed.column_names) >= {"input_ids", "attention_mask", "word_ids"}
    blocks = packed["input_ids"]
    assert all(len(b) == 32 for b in blocks[:-1]) and 2 < len(blocks[-1]) <= 32  # the remainder: a shorter block
    assert all(b[0] == tokenizer.cls_token_id and b[-1] == tokenizer.sep_token_id for b in blocks)
    inner = [t for b in blocks for t in b[1:-1]]
    expected = [t for line in tokenizer(list(ds["text"]), add_special_tokens=False)["input_ids"] for t in line]
    assert inner == expected  # the stream, in order, nothing dropped or duplicated
    for ids, words in zip(blocks, packed["word_ids"], strict=True):
        assert len(words) == len(ids) and words[0] is None and words[-1] is None
        inner_words = words[1:-1]
        assert inner_words[0] == 0 and all(b - a in (0, 1) for a, b in zip(inner_words, inner_words[1:], strict=False))
        for position, word in enumerate(inner_words[1:], start=1):  # a word continues only with "##" pieces
            continuing = tokenizer.convert_ids_to_tokens(ids[1 + position]).startswith("##")
            if continuing:
                assert word == inner_words[position - 1]


def test_line_mode_truncates_and_keeps_length(caplog):
    tokenizer = tiny_wordpiece()
    ds = Dataset.from_dict(
        {"text": ["short one", "a much longer line that will not fit in the sequence length at all"]}
    )
    with caplog.at_level(logging.WARNING, logger="hf_ssl.data.text"):
        lines = tokenize_dataset(ds, tokenizer, "text", max_seq_length=12, mode="line", keep_word_ids=True)
    assert lines["length"] == [len(ids) for ids in lines["input_ids"]]
    assert lines["length"][1] == 12 and lines["length"][0] < 12
    assert lines["input_ids"][1][-1] == tokenizer.sep_token_id  # truncation keeps the closing special token
    assert "1 of 2 lines were longer than max_seq_length=12" in caplog.text
    assert lines["word_ids"][0][0] is None and lines["word_ids"][0][1] == 0
    with pytest.raises(UsageError, match="mode must be one of 'pack', 'line'"):
        tokenize_dataset(ds, tokenizer, "text", 12, mode="sentences")
    with pytest.raises(UsageError, match="max_seq_length must be >= 3"):
        tokenize_dataset(ds, tokenizer, "text", 2)


def test_default_text_is_prose_with_a_fixed_topic_split():
    train, test = load_default_text("train"), load_default_text("test")
    assert len(train) > 1000 and len(test) > 100
    assert not set(train["topic"]) & set(test["topic"])  # whole topics per split: no leakage
    assert load_default_text("test")["text"] == test["text"]  # fixed
    words = sum(len(t.split()) for t in train["text"])
    assert words > 20000
    assert not any(t.lstrip().startswith((">>>", "***", "===")) for t in train["text"])  # no code or headings
    assert sum(t.rstrip().endswith((".", "?", "!", ")", '"')) for t in train["text"]) > 0.8 * len(train)
    paragraphs = load_default_text("train", unit="paragraph")
    assert len(paragraphs) < len(train)
    with pytest.raises(UsageError, match="split must be one of 'train', 'test'"):
        load_default_text("validation")


def test_real_wikipedia_sentences_pack_with_the_bert_vocabulary():
    if not (ENWIKI.exists() and BERT_TOKENIZER.exists()):
        pytest.skip(f"real data not available: {ENWIKI} or {BERT_TOKENIZER} is absent (see ../shared/data/README.md)")
    lines = read_text_lines(ENWIKI)[:300]
    ds, _ = clean_text_column(Dataset.from_dict({"text": lines}), "text")
    tokenizer = load_tokenizer(BERT_TOKENIZER)
    packed = tokenize_dataset(ds, tokenizer, "text", max_seq_length=128)
    assert sum(len(b) - 2 for b in packed["input_ids"]) == sum(
        len(ids) for ids in tokenizer(list(ds["text"]), add_special_tokens=False)["input_ids"]
    )
    assert packed["token_type_ids"][0] == [0] * 128
    unknown = sum(b.count(tokenizer.unk_token_id) for b in packed["input_ids"])
    assert unknown < 0.01 * sum(len(b) for b in packed["input_ids"])
