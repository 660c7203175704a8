"""Data stage: sources -> formats -> chat template + loss mask -> length policy -> selection -> packing -> cache.

`build.build_datasets(cfg, tokenizer, seed, model)` is the one entry point the pipeline calls; `preview.preprocess`
backs `tunekit preprocess`. Modules: schema (the `data:` recipe section), sources (files, globs, saved
datasets, hub; source_files: JSON/JSONL/CSV text, compressed or with a BOM), formats (row -> messages/text), templates (chat template choice), masking (loss mask from the
rendering), select* and dedup (`data.select`), packing (best-fit decreasing), cache (fingerprinted on-disk
cache), stats (row accounting).
"""
