"""Data stage: sources -> formats -> chat template + loss mask -> length policy -> packing -> cache.

`build.build_datasets(cfg, tokenizer, seed)` is the one entry point the pipeline calls; `preview.preprocess`
backs `tunekit preprocess`. Modules: schema (the `data:` recipe section), sources (files, globs, saved
datasets, hub), formats (row -> messages/text), templates (chat template choice), masking (loss mask from the
rendering), packing (best-fit decreasing), cache (fingerprinted on-disk cache), stats (row accounting).
"""
