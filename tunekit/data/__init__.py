"""Data stage: sources -> formats -> chat template + loss mask -> length policy -> dataset.

`build_datasets(recipe, tokenizer)` is the one entry point the pipeline calls.
"""
