"""Launch settings, the compatibility table, shipped launcher configs and the launcher command line."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, run_cli, tiny_recipe
from tunekit.errors import UserError
from tunekit.launch import engines, relaunch, rules, runtime
from tunekit.launch.engines import config_path, deepspeed_config, fsdp_config
from tunekit.launch.schema import DeepSpeedSettings, FSDPSettings
from tunekit.recipe.load import load_recipe

BASE_FACTS = {"method": "lora", "strategy": "ddp", "optim": "adamw_torch", "gradient_checkpointing": False,
              "quant_storage_set": False, "sharding": None, "zero_stage": None, "offload": False,
              "offload_params": False, "fsdp_activation_checkpointing": False}


def fired(**facts) -> list[str]:
    return [r["id"] for r in rules.violations({**BASE_FACTS, **facts})]


def test_rules_fire_exactly_on_their_combinations() -> None:
    assert fired() == []
    assert fired(method="qlora", strategy="deepspeed", zero_stage=3, sharding="zero3") == ["qlora-sharded-storage"]
    assert fired(method="qlora", strategy="fsdp", sharding="fsdp", quant_storage_set=True) == []
    assert fired(method="qlora", strategy="deepspeed", zero_stage=2, sharding="zero2") == []
    assert fired(method="prefix_tuning", strategy="fsdp", sharding="fsdp") == ["prompt-learning-sharded"]
    assert fired(method="prefix_tuning", strategy="ddp") == []
    assert fired(method="loreft", strategy="deepspeed", sharding="zero3") == ["representation-sharded"]
    assert fired(method="lisa", strategy="deepspeed", sharding="zero1") == ["lisa-sharded"]
    assert fired(offload=True, optim="adamw_bnb_8bit") == ["offload-optimizer-kind"]
    assert fired(offload=True, optim="adamw_torch") == []
    assert fired(strategy="deepspeed", zero_stage=2, offload=True, offload_params=True) == ["param-offload-needs-zero3"]
    assert fired(strategy="fsdp", fsdp_activation_checkpointing=True, gradient_checkpointing=True) == [
        "double-activation-checkpointing"]


def test_validate_rejects_an_incompatible_combination_with_the_explanation(tmp_path: Path) -> None:
    recipe = tiny_recipe(tmp_path, trainer={"optim": "adafactor"},
                         launch={"strategy": "deepspeed", "nproc": 2, "deepspeed": {"offload_optimizer": True}})
    proc = run_cli("validate", recipe)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    text = " ".join(proc.stderr.split())
    assert "[offload-optimizer-kind]" in text and "CPU offload steps the optimizer on CPU" in text
    assert "Instead: set trainer.optim: adamw_torch, or turn CPU offload off." in text
    # Overrides and the --nproc style flags go through the same check.
    proc = run_cli("validate", tiny_recipe(tmp_path), "launch.strategy=deepspeed", "launch.deepspeed.stage=2",
                   "launch.deepspeed.offload_params=true")
    assert proc.returncode == 2 and "[param-offload-needs-zero3]" in proc.stderr
    ok = run_cli("validate", tiny_recipe(tmp_path), "launch.strategy=deepspeed", "launch.deepspeed.config=zero3-offload")
    assert ok.returncode == 0, ok.stderr
    # QLoRA under FSDP needs the 4-bit storage dtype, and the advice given is a setting the recipe accepts.
    qlora = tiny_recipe(tmp_path, "qlora.yaml", method={"name": "qlora", "r": 8, "alpha": 16})
    proc = run_cli("validate", qlora, "launch.nproc=2", "launch.strategy=fsdp")
    assert proc.returncode == 2 and "[qlora-sharded-storage]" in proc.stderr
    assert "set method.quant_storage: auto" in " ".join(proc.stderr.split())
    ok = run_cli("validate", qlora, "launch.nproc=2", "launch.strategy=fsdp", "method.quant_storage=auto")
    assert ok.returncode == 0, ok.stderr


def test_docs_render_the_rules_table() -> None:
    doc = (REPO / "docs" / "scaling.md").read_text()
    block = re.search(r"<!-- rules:start -->\n(.*?)<!-- rules:end -->", doc, re.S)
    assert block, "docs/scaling.md lost its rules markers"
    assert block.group(1) == rules.render_markdown(), "regenerate with: python -m tunekit.launch.rules"


def test_shipped_configs_by_name_and_recipe_settings_applied() -> None:
    for name in ("zero1", "zero2", "zero3", "zero3-offload"):
        cfg = deepspeed_config(DeepSpeedSettings(config=name))
        assert cfg["train_micro_batch_size_per_gpu"] == "auto" and cfg["gradient_accumulation_steps"] == "auto"
    cfg = deepspeed_config(DeepSpeedSettings(config="zero2", stage=3, offload_optimizer=True))
    zero = cfg["zero_optimization"]
    assert zero["stage"] == 3 and zero["offload_optimizer"]["device"] == "cpu"
    assert zero["stage3_gather_16bit_weights_on_model_save"] is True and cfg["optimizer"]["type"] == "AdamW"
    assert deepspeed_config(DeepSpeedSettings(config="zero3-offload", offload_params=False))[
        "zero_optimization"]["offload_param"] == {"device": "none"}
    f = fsdp_config(FSDPSettings(sharding="shard_grad_op", cpu_offload=True, auto_wrap="none"))
    assert f["version"] == 2 and f["reshard_after_forward"] is False and f["cpu_offload"] is True
    assert f["auto_wrap_policy"] == "NO_WRAP" and f["state_dict_type"] == "SHARDED_STATE_DICT"
    assert fsdp_config(FSDPSettings(config="fsdp2-offload"))["activation_checkpointing"] is True
    with pytest.raises(UserError, match="Did you mean `zero2`"):
        config_path("deepspeed", "zer2")
    with pytest.raises(UserError, match="does not exist"):
        config_path("fsdp", "/nope/my.yaml")


def test_flags_become_launch_overrides_and_strategy_resolves() -> None:
    ov = relaunch.flag_overrides(nproc=8, nnodes=2, node_rank=1, master_addr="10.0.0.1", master_port=None)
    assert ov == ["launch.nproc=8", "launch.nnodes=2", "launch.node_rank=1", "launch.master_addr=10.0.0.1"]
    r = load_recipe(REPO / "recipes" / "quickstart.yaml", ov)
    assert r.launch.world_size == 16 and r.launch.resolved_strategy == "ddp"
    assert load_recipe(REPO / "recipes" / "quickstart.yaml").launch.resolved_strategy == "single"
    with pytest.raises(UserError, match="node_rank=2 must be below"):
        load_recipe(REPO / "recipes" / "quickstart.yaml", ["launch.node_rank=2"])
    with pytest.raises(UserError, match="strategy single runs one process"):
        load_recipe(REPO / "recipes" / "quickstart.yaml", ["launch.strategy=single", "launch.nproc=2"])


def test_launcher_command_lines() -> None:
    r = load_recipe(REPO / "recipes" / "quickstart.yaml", ["launch.nproc=4"])
    cmd = relaunch.launcher_command(r.launch, ["train", "x.yaml"])
    assert cmd[:3] == [sys.executable, "-m", "torch.distributed.run"] and "--standalone" in cmd
    assert cmd[cmd.index("--nproc-per-node") + 1] == "4" and cmd[-4:] == ["-m", "tunekit", "train", "x.yaml"]
    r = load_recipe(REPO / "recipes" / "quickstart.yaml",
                    ["launch.nnodes=2", "launch.node_rank=1", "launch.master_addr=h0", "launch.master_port=1234"])
    cmd = relaunch.launcher_command(r.launch, ["train", "x.yaml"])
    assert "--standalone" not in cmd and cmd[cmd.index("--master-addr") + 1] == "h0"
    assert cmd[cmd.index("--node-rank") + 1] == "1" and cmd[cmd.index("--master-port") + 1] == "1234"
    r = load_recipe(REPO / "recipes" / "quickstart.yaml", ["launch.nproc=2", "launch.launcher=accelerate"])
    cmd = relaunch.launcher_command(r.launch, ["train", "x.yaml"])
    assert cmd[2] == "accelerate.commands.launch" and cmd[cmd.index("--num_processes") + 1] == "2"
    import torch

    if not torch.cuda.is_available():  # accelerate launch --cpu needs MPI for several processes
        with pytest.raises(UserError, match="use launch.launcher: torchrun"):
            rules.check_runnable(r.launch)
    env = relaunch.worker_env()
    assert env["PYTHONPATH"].split(":")[0] == str(Path(relaunch.__file__).resolve().parents[2])


def test_torchrun_gives_stopping_workers_time_for_their_step_and_checkpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    """torchrun SIGKILLs workers 30 s after passing a signal on (its default), which can fall inside the step and
    checkpoint a stopping GPU run is finishing: tunekit gives them longer, unless the user set the variable."""
    monkeypatch.delenv("TORCH_ELASTIC_SHUTDOWN_TIMEOUT", raising=False)
    assert relaunch.worker_env()["TORCH_ELASTIC_SHUTDOWN_TIMEOUT"] == str(relaunch.SHUTDOWN_TIMEOUT_S)
    assert relaunch.SHUTDOWN_TIMEOUT_S >= 300
    monkeypatch.setenv("TORCH_ELASTIC_SHUTDOWN_TIMEOUT", "45")
    assert relaunch.worker_env()["TORCH_ELASTIC_SHUTDOWN_TIMEOUT"] == "45"


def test_slurm_script_uses_the_documented_flags() -> None:
    script = (REPO / "scripts" / "slurm_multinode.sh").read_text()
    for flag in ("--nnodes", "--node-rank", "--master-addr", "--master-port", "--nproc"):
        assert flag in script


def test_a_dropped_engine_is_refused_not_trained(monkeypatch: pytest.MonkeyPatch) -> None:
    """If accelerate set up another engine than the recipe's strategy (e.g. FSDP dropped for plain DDP), the run
    stops before training instead of looking sharded when it is not."""
    from types import SimpleNamespace

    from accelerate.utils import DistributedType

    monkeypatch.setenv("WORLD_SIZE", "2")
    r = load_recipe(REPO / "recipes" / "quickstart.yaml", ["launch.nproc=2", "launch.strategy=fsdp"])
    as_run = SimpleNamespace(accelerator=SimpleNamespace(distributed_type=DistributedType.FSDP))
    assert engines.check_engine(r.launch, as_run) == "FSDP"
    dropped = SimpleNamespace(accelerator=SimpleNamespace(distributed_type=DistributedType.MULTI_CPU))
    with pytest.raises(UserError, match="accelerate set up MULTI_CPU instead of FSDP"):
        engines.check_engine(r.launch, dropped)


def test_strategy_under_a_users_own_launcher(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under `torchrun --nproc-per-node 2 -m tunekit train` the recipe says one process; the environment wins."""
    auto = load_recipe(REPO / "recipes" / "quickstart.yaml")
    single = load_recipe(REPO / "recipes" / "quickstart.yaml", ["launch.strategy=single"])
    assert runtime.strategy(auto.launch) == "single"
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert runtime.strategy(auto.launch) == "ddp" and runtime.scale_summary(auto.launch, auto.trainer)["global_batch_size"] == 2 * (
        auto.trainer.per_device_batch_size * auto.trainer.gradient_accumulation_steps)
    with pytest.raises(UserError, match="launch.strategy single, but this process is one of 2"):
        runtime.strategy(single.launch)
