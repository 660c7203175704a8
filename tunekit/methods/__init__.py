"""Methods: how weights are trained. `BUILDERS` (in `registry.py`) maps a method name to its builder."""
