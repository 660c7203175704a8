"""Regenerate docs/sample-report/: train the quickstart recipe on builtin:tiny-llama, then `tunekit eval` it.

    python scripts/make_sample_report.py [KEY=VALUE ...]   # ~1 min on 2 idle CPU cores

Extra recipe overrides may be given (e.g. model.path=builtin:small-llama for the quickstart's own model).

The run happens in a temporary directory (named `runs/quickstart` inside it, so the report's paths read
like a user's); the report files (report.md, report.json, PNGs) are copied to docs/sample-report/.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "docs" / "sample-report"
TASKS = ["quickstart-loss", "quickstart-arith", "quickstart-choice"]


def main() -> None:
    from tunekit.eval.run import evaluate
    from tunekit.pipeline import train
    from tunekit.recipe.load import load_recipe

    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        overrides = ["model.path=builtin:tiny-llama", "output.dir=runs/quickstart", *sys.argv[1:]]
        recipe = load_recipe(REPO / "recipes" / "quickstart.yaml", overrides)
        run = train(recipe)
        report = evaluate(run, TASKS)
        shutil.rmtree(OUT, ignore_errors=True)
        OUT.mkdir(parents=True)
        for name in ("report.md", "report.json", "training.png", "metrics.png"):
            shutil.copy(report / name, OUT / name)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
