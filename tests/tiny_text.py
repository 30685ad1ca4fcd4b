"""The tiny text encoder the tests build: a BERT of width 32 and 2 layers over a WordPiece vocabulary of 300 pieces
trained on the embedded corpus (small enough that words split into several pieces), and a few scored STS pairs."""

from __future__ import annotations

from functools import cache

from hf_ssl.data.text import load_default_text, train_tokenizer

VOCAB = 300
TINY_BERT = {
    "model_type": "bert",
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "vocab_size": VOCAB,
    "max_position_embeddings": 64,
}
"""The encoder sub-config (``MLMConfig(encoder=...)``, ``SimCSEConfig(encoder=...)``) of the tiny BERT."""
STS_PAIRS = [
    (5.0, "The cat sat on the mat.", "A cat is sitting on the mat."),
    (0.4, "A dog runs in the park.", "Python is a programming language."),
    (3.2, "The weather is nice today.", "Today the weather is good."),
    (1.0, "She reads a book in the garden.", "Numbers can be added."),
    (4.6, "A man plays the guitar.", "A man is playing a guitar."),
    (0.0, "The sun is hot.", "Lists hold items in order."),
    (2.5, "A woman cuts an onion.", "A woman is cooking."),
    (4.2, "Children play football.", "Kids are playing soccer."),
]
"""(score on STS-B's 0-5 scale, sentence1, sentence2)."""


@cache
def tokenizer():
    """A WordPiece tokenizer of :data:`VOCAB` pieces trained on the embedded corpus."""
    return train_tokenizer(load_default_text("train")["text"], vocab_size=VOCAB)
