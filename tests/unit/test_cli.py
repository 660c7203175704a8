"""The CLI surface: fast help without torch, validate output, recipes list/show/copy, exit codes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from tests.conftest import RECIPES, run_cli


def test_help_does_not_import_torch() -> None:
    code = ("import sys; from tunekit.cli import app\n"
            "try:\n    app(['--help'], standalone_mode=False)\nexcept SystemExit:\n    pass\n"
            "heavy = [m for m in ('torch', 'transformers', 'trl', 'peft', 'datasets') if m in sys.modules]\n"
            "print('HEAVY', heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "HEAVY []" in out


def test_validate_and_recipes_do_not_import_torch() -> None:
    code = ("import sys; from tunekit.cli import app\n"
            f"app(['validate', r'{RECIPES / 'quickstart.yaml'}'], standalone_mode=False)\n"
            "app(['recipes', 'list'], standalone_mode=False)\n"
            "print('HEAVY', [m for m in ('torch', 'transformers') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "HEAVY []" in out


def test_version_and_module_entry() -> None:
    proc = run_cli("--version")
    assert proc.returncode == 0 and proc.stdout.startswith("tunekit ")


def test_validate_prints_resolved_recipe() -> None:
    proc = run_cli("validate", RECIPES / "quickstart.yaml", "trainer.max_steps=3")
    assert proc.returncode == 0, proc.stderr
    resolved = yaml.safe_load(proc.stdout)
    assert resolved["trainer"]["max_steps"] == 3
    assert resolved["trainer"]["weight_decay"] == 0.0  # defaults are filled in
    assert resolved["model"]["trust_remote_code"] is False


def test_recipe_typo_exits_2_with_location_and_no_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    text = (RECIPES / "quickstart.yaml").read_text().replace("learning_rate:", "learnig_rate:")
    bad.write_text(text)
    line = next(i for i, ln in enumerate(text.splitlines(), 1) if "learnig_rate" in ln)
    for cmd in ("validate", "train"):
        proc = run_cli(cmd, bad)
        assert proc.returncode == 2
        assert f"{bad}:{line}:3" in proc.stderr and "Did you mean `learning_rate`?" in proc.stderr
        assert "Traceback" not in proc.stderr
    proc = run_cli("--debug", "validate", bad)
    assert proc.returncode != 0 and "Traceback" in proc.stderr


def test_bad_override_exits_2() -> None:
    proc = run_cli("validate", RECIPES / "quickstart.yaml", "trainer.learning_rate=fast")
    assert proc.returncode == 2 and "override `trainer.learning_rate=fast`" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_recipes_list_show_copy(tmp_path: Path) -> None:
    listed = run_cli("recipes", "list").stdout
    assert "quickstart" in listed
    shown = run_cli("recipes", "show", "quickstart").stdout
    assert shown == (RECIPES / "quickstart.yaml").read_text()
    proc = run_cli("recipes", "copy", "quickstart", tmp_path)
    assert proc.returncode == 0 and (tmp_path / "quickstart.yaml").read_text() == shown
    again = run_cli("recipes", "copy", "quickstart", tmp_path)
    assert again.returncode == 2 and "--force" in again.stderr
    missing = run_cli("recipes", "show", "quickstrat")
    assert missing.returncode == 2 and "Did you mean `quickstart`?" in missing.stderr


def test_preprocess_quickstart_prints_stats_and_marked_examples() -> None:
    proc = run_cli("preprocess", RECIPES / "quickstart.yaml", "--show", "2")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for expected in ("rows in", "trained tokens", "truncated", "packing efficiency", "example lengths",
                     "builtin:quickstart/train.jsonl", "cache"):
        assert expected in out, expected
    assert out.count("── example ") == 2 and "example 3" not in out
    assert "[[" in out and "<|im_end|>" in out  # trained text (ending in EOS) is marked
    assert "Traceback" not in proc.stderr


def test_validate_checks_the_named_chat_template_and_its_variables() -> None:
    """A built-in or file template is loaded at validate (no tokenizer, no torch): an unknown name, or a
    data.chat_template_kwargs name the template never reads, exits 2 before any run is started."""
    quick = RECIPES / "quickstart.yaml"
    ok = run_cli("validate", quick, "data.chat_template=qwen3", "data.chat_template_kwargs={enable_thinking: false}")
    assert ok.returncode == 0, ok.stderr
    typo = run_cli("validate", quick, "data.chat_template=qwen3", "data.chat_template_kwargs={enable_thinkin: false}")
    assert typo.returncode == 2 and "Traceback" not in typo.stderr
    assert "data.chat_template_kwargs.enable_thinkin: the chat template never reads" in typo.stderr
    assert "Did you mean `enable_thinking`?" in typo.stderr
    unknown = run_cli("validate", quick, "data.chat_template=qwen9")
    assert unknown.returncode == 2 and "data.chat_template: `qwen9` is neither a built-in template" in unknown.stderr


def test_recipes_copy_into_a_new_dir_or_a_yaml_file_only(tmp_path: Path) -> None:
    """`newdir/` (the slash Path drops) means a directory: newdir/quickstart.yaml, not a file named newdir."""
    proc = run_cli("recipes", "copy", "quickstart", "newdir/", cwd=tmp_path)
    assert proc.returncode == 0 and (tmp_path / "newdir" / "quickstart.yaml").is_file(), proc.stderr
    txt = run_cli("recipes", "copy", "quickstart", "my.txt", cwd=tmp_path)
    assert txt.returncode == 2 and "my.txt: give the copy a .yaml file name" in txt.stderr
    assert not (tmp_path / "my.txt").exists()


def test_plan_refuses_a_gpu_memory_or_nproc_it_cannot_use() -> None:
    """0 was ignored (truthiness) and -5 planned against; --gpu with --gpu-memory keeps the GPU's name."""
    recipe = RECIPES / "quickstart.yaml"
    for flag, value, message in [("--gpu-memory", "0", "--gpu-memory: 0 is not a memory size"),
                                 ("--gpu-memory", "-5", "--gpu-memory: -5 is not a memory size"),
                                 ("--gpu-memory", "nan", "--gpu-memory: nan is not a memory size"),
                                 ("--nproc", "0", "'--nproc'")]:
        proc = run_cli("plan", recipe, "--no-data", flag, value)
        assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    both = run_cli("plan", recipe, "--no-data", "--gpu", "H100", "--gpu-memory", "40", check=True)
    assert "H100 with 40 GiB (40.00 GiB): fits" in both.stdout


def test_help_examples_keep_their_lines() -> None:
    """click re-wraps a docstring's paragraphs: an example line needs its `\\b` paragraph, or `--help` ran two
    commands together into one line."""
    import typer.main
    from click.testing import CliRunner

    from tunekit.cli import app

    group = typer.main.get_command(app)
    checked = 0
    for name, command in group.commands.items():
        doc = command.callback.__doc__ or "" if command.callback else ""
        examples = [line.strip() for line in doc.splitlines() if line.strip().startswith(("Example", "tunekit "))]
        if not examples:
            continue
        out = CliRunner().invoke(group, [name, "--help"], terminal_width=100).output
        lines = [line.strip() for line in out.splitlines()]
        for example in examples:
            assert example in lines, f"tunekit {name} --help:\n{out}"
            checked += 1
    assert checked >= 8
