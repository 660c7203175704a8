"""Merge stage: `adapter.py` folds a run's adapter into its base, `models.py` merges several models that share
a base (soups, task arithmetic, TIES, DARE, ...), `run.py` is what `tunekit merge` calls."""
