"""data2vec for text (Baevski et al., 2022) on any Hugging Face text encoder, a ``Data2VecTextModel`` by default.

Work in progress: the model and its loss; the objective record (CLI, evaluation, export) is not registered yet.
"""
