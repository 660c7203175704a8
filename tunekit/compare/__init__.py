"""`tunekit compare`: train variants of one recipe (a grid of --vary values) and compare them in one table.

grid.py (parse --vary, expand, name) -> check.py (validate every variant first) -> run.py (one `tunekit train`
process per variant, resumable) -> report.py (compare.json, compare.md, compare.png).
"""
