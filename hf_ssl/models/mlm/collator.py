"""MLM's collator: the shared :class:`~hf_ssl.data.masked_text.TokenMaskingCollator` (dynamic BERT masking, 80/10/10,
optionally whole-word), which data2vec text uses too; MLM knows it as :class:`MLMCollator`."""

from hf_ssl.data.masked_text import IGNORE_INDEX, NO_WORD, TokenMaskingCollator

MLMCollator = TokenMaskingCollator

__all__ = ["IGNORE_INDEX", "NO_WORD", "MLMCollator"]
