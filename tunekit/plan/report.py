"""`tunekit plan`: the whole answer for a recipe (memory parts, verdict, fixes, data, time) as a dict (--json)
and as text; the one-line summary `tunekit train` prints."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tunekit.plan import advice, hardware, throughput
from tunekit.plan.data_plan import data_plan
from tunekit.plan.estimate import GIB, Estimate, estimate, verdict
from tunekit.plan.params import ParamTable, param_table
from tunekit.plan.rl_stage import estimate_rl
from tunekit.trainers.reft import warmup_recipe
from tunekit.trainers.training_args import resolved_optim

if TYPE_CHECKING:
    from tunekit.recipe.schema import Recipe

PART_LABELS = {"weights": "weights", "gradients": "gradients", "optimizer": "optimizer state",
               "activations": "activations", "logits": "LM head + loss buffers", "gathered_layers":
               "gathered layers (ZeRO-3/FSDP)", "ddp_buckets": "DDP gradient buckets",
               "overlap": "overlap (gradients made as activations free)", "reference": "KL reference (RL stage)",
               "value_head": "PPO value head + its gradient, optimizer state", "generation":
               "generation KV cache beyond the step's (RL stage)", "runtime": "CUDA context + workspaces"}


class Planner:
    """Estimates for a recipe and its variants, reusing the meta-built parameter table while the model and
    method stay the same."""

    def __init__(self, device: str = "cuda") -> None:
        self.device = device
        self.tables: dict[str, ParamTable] = {}

    def table(self, recipe: Recipe) -> ParamTable:
        key = recipe.model.model_dump_json() + recipe.method.model_dump_json()
        if key not in self.tables:
            self.tables[key] = param_table(recipe, self.device)
        return self.tables[key]

    def estimate(self, recipe: Recipe, seq: int | None = None) -> Estimate:
        return estimate(recipe, self.table(recipe), self.device, seq)


def stage_estimates(recipe: Recipe, planner: Planner, seq: int | None = None) -> tuple[Estimate, dict | None]:
    """(the estimate of the stage with the highest peak, per-stage parts and peaks or None). A reft run has two
    stages: its SFT warm-up, and its RL stage (rl_stage.py: reference, value head, generation)."""
    warm = planner.estimate(planned_recipe(recipe), seq)
    if recipe.trainer.kind != "reft":
        return warm, None
    rl = estimate_rl(recipe, planner.table(planned_recipe(recipe)), planner.device, seq)
    stages = {name: {"per_device": e.gpu, "peak_bytes": e.total, "micro_batch": [e.micro.batch, e.micro.seq]}
              for name, e in (("warmup", warm), ("rl", rl))}
    return (rl if rl.total > warm.total else warm), stages


def plan(recipe: Recipe, gpu: hardware.Gpu, device: str = "cuda", with_data: bool = True) -> dict:
    original, recipe = recipe, planned_recipe(recipe)
    planner = Planner(device)
    data = data_plan(recipe, recipe.launch.world_size) if with_data else {"available": False, "reason": "--no-data"}
    seq = min(recipe.data.max_length, data["longest_row"]) if data.get("longest_row") else None
    est, stages = stage_estimates(original, planner, seq)
    fit = verdict(est, gpu)
    rl_peak = bool(stages) and est.total == stages["rl"]["peak_bytes"] > stages["warmup"]["peak_bytes"]

    def fits(r: Recipe) -> dict | None:
        v = verdict(planner.estimate(r, seq), gpu)
        return v if v["verdict"] != "does not fit" else None

    fixes = advice.fixes(recipe, fits) if fit["verdict"] != "fits" and not rl_peak else []
    notes = est.notes + (["the RL stage is the peak: the planner's fixes change the warm-up only; lower "
                          "trainer.rl.per_device_batch_size, max_completion_length or beta (no reference)"]
                         if rl_peak and fit["verdict"] != "fits" else [])
    time_est = planner.estimate(recipe, seq) if rl_peak else est
    return {"recipe": {"model": recipe.model.path, "method": recipe.method.name, "optim": resolved_optim(recipe.trainer.optim, device == "cuda")},
            "layout": {"strategy": est.layout.describe(), "world_size": est.layout.world},
            "micro_batch": {"batch": est.micro.batch, "seq": est.micro.seq, "attention": est.micro.attention,
                            "checkpointing": est.micro.checkpointing, "element_bytes": est.micro.element_bytes,
                            "lm_head": "fused" if est.micro.fused_head else "logits"},
            "params": est.params, "per_device": est.gpu, "cpu_per_process": est.cpu, "fit": fit, "fixes": fixes,
            "data": data, "time": _time(recipe, time_est, gpu, data), "notes": notes,
            **({"stages": stages} if stages else {})}


def _time(recipe: Recipe, est: Estimate, gpu: hardware.Gpu, data: dict) -> dict:
    s, full = est.shape, recipe.method.name in throughput.FULL_METHODS
    n = throughput.matmul_params(est.params["total"], s, s.tied)
    adapter = 0 if full else min(est.params["trainable"], n)
    flops = throughput.flops_per_token(n - adapter, s, est.micro.seq, full, est.micro.checkpointing, adapter)
    t = recipe.trainer
    tokens = data.get("tokens_total") if data.get("available") else (
        t.max_steps * t.per_device_batch_size * t.gradient_accumulation_steps * est.layout.world * est.micro.seq
        if t.max_steps > 0 else 0)
    out = throughput.timing(int(tokens or 0), flops, gpu.bf16_tflops, est.layout.world,
                            recipe.method.name == "qlora")
    out["basis"] = ("data plan tokens" if data.get("available") else
                    "max_steps x global batch x max_length (no data plan)" if tokens else "no step count")
    out["flops_formula"] = throughput.formula(full, est.micro.checkpointing)
    return out


def gib(n: int) -> str:
    return f"{n / GIB:.2f} GiB" if abs(n) >= GIB // 10 else f"{n / 1024**2:.2f} MiB"


def render(result: dict) -> str:
    r, fit, lay, mb = result["recipe"], result["fit"], result["layout"], result["micro_batch"]
    lines = [f"plan: {r['method']} on {r['model']}, {lay['strategy']} x {lay['world_size']}, optimizer {r['optim']}",
             f"params: {result['params']['trainable']:,} trainable of {result['params']['total']:,}",
             f"micro-batch: {mb['batch']} x {mb['seq']} tokens, attention {mb['attention']}, checkpointing "
             f"{'on' if mb['checkpointing'] else 'off'}, LM head {mb['lm_head']}", "", "memory per device:"]
    for key, value in result["per_device"].items():
        if value:
            lines.append(f"  {PART_LABELS.get(key, key):<48} {gib(value):>12}")
    lines.append(f"  {'total':<48} {gib(fit['peak_bytes']):>12}")
    for key, value in result["cpu_per_process"].items():
        lines.append(f"  on CPU per process: {PART_LABELS.get(key, key)} {gib(value)}")
    lines += ["", f"{fit['gpu']} ({gib(fit['memory_bytes'])}): {fit['verdict']}, headroom "
              f"{gib(fit['headroom_bytes'])} ({fit['headroom_percent']}%)"]
    for f in result["fixes"]:
        lines.append(f"  fits with {f['change']}: {gib(f['peak_bytes'])} ({' '.join(f['overrides'])})")
    if fit["verdict"] == "does not fit" and not result["fixes"]:
        lines.append("  no single change or stack of the planner's changes makes it fit: more or larger GPUs")
    for name, st in (result.get("stages") or {}).items():
        lines.append(f"  stage {name}: {gib(st['peak_bytes'])} (micro-batch {st['micro_batch'][0]} x "
                     f"{st['micro_batch'][1]} tokens)" + (" <- the peak" if st["peak_bytes"] == fit["peak_bytes"] else ""))
    lines += ["", _data_line(result["data"]), _time_line(result["time"]), *[f"note: {n}" for n in result["notes"]]]
    return "\n".join(lines) + "\n"


def _data_line(d: dict) -> str:
    if not d.get("available"):
        return f"data: not planned ({d.get('reason')})"
    trained = d["trained_tokens"]  # "n/a" for preference and RL rows (TRL tokenizes them)
    trained = f"{trained:,}" if isinstance(trained, int) else trained
    return (f"data: {d['rows']:,} rows ({'packed' if d['packed'] else 'unpacked'}), {d['tokens']:,} tokens, "
            f"{trained} trained; {d['steps']} steps of {d['tokens_per_step']:,} tokens "
            f"(global batch {d['global_batch']}, {d['steps_per_epoch']} steps per epoch)")


def _time_line(t: dict) -> str:
    head = (f"time: {t['flops_per_token'] / 1e9:.2f} GFLOP per token ({t['flops_formula']}), MFU "
            f"{t['mfu_assumed']:.0%} assumed -> {t['tokens_per_second_per_device']:,} tokens/s per device")
    if t["seconds"] is None:
        return head + "; no token count to time"
    return head + f"; {t['tokens']:,} tokens in {_duration(t['seconds'])} ({t['basis']})"


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def planned_recipe(recipe: Recipe) -> Recipe:
    """The recipe the data plan, the fixes and the time are for: a staged kind (reft) as its SFT warm-up (its RL
    stage, planned in rl_stage.py, keeps the same weights and adapter)."""
    return warmup_recipe(recipe) if recipe.trainer.kind == "reft" else recipe


def for_run(recipe: Recipe, device: str) -> dict | None:
    """The estimate `tunekit train` records: per-device parts and peak on the device it trains on (no data plan:
    the run prepares its own data). None when the planner cannot build the model on the meta device."""
    from tunekit.errors import UserError

    try:
        est, _ = stage_estimates(recipe, Planner(device))
    except (UserError, RuntimeError, ValueError, NotImplementedError) as e:
        return {"error": str(e).splitlines()[0][:200]}
    return {"device": device, "per_device": est.gpu, "peak_bytes": est.total, "layout": est.layout.describe()}


def summary_line(result: dict) -> str:
    fit = result["fit"]
    return (f"plan: {gib(fit['peak_bytes'])} per device predicted ({fit['verdict']} on {fit['gpu']}), "
            f"~{result['time']['tokens_per_second_per_device']:,} tokens/s per device at "
            f"{result['time']['mfu_assumed']:.0%} MFU")
