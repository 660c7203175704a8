"""Model stage: base model + tokenizer (`load.py`), offline tiny builtins (`builtin.py`)."""
