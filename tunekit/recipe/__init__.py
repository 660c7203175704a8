"""Recipes: the pydantic schema (`schema.py`) and the YAML loader with source-located errors (`load.py`)."""
