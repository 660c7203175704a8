"""Evaluation: tasks (loss, generation, multiple choice, lm-eval passthrough), metrics, and the report.

`tunekit.eval.run.evaluate(target, ...)` is the one entry point the CLI and the pipeline call.
"""
