"""Trainers: the training objective. `BUILDERS` (in `registry.py`) maps a trainer kind to its builder."""
