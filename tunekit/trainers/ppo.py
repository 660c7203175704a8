"""`trainer.rl.algorithm: ppo`: ReFT's RL stage as the ReFT paper trains it, PPO with a value head.

TRL 1.16 ships no PPO trainer, so this is tunekit's own, kept as small as PPO allows. It is a transformers
`Trainer` subclass: checkpoints, `--resume`, the optimizer and schedule, the metrics.jsonl writer, the display,
the divergence guard and the signal stop work as in every other stage. The Trainer's loop sees one optimizer
step per PPO minibatch; a rollout feeds `ppo.epochs x ppo.num_mini_batches` of them:

  rollout   the dataloader hands over Q questions (Q x num_generations = per_device_batch_size x
            gradient_accumulation_steps x num_mini_batches completions); the current policy samples
            num_generations completions per question (temperature, top_p, top_k, max_completion_length).
            Rewards: the recipe's reward functions on the decoded completion, placed on its last token (the
            end-of-sequence token, or the last one when it was cut at max_completion_length), plus a per-token
            KL penalty -beta (log π_old - log π_ref) towards the warm-up model (KL in the reward, as the paper).
            Values V(s_t): a linear value head on the policy's last hidden state. GAE (gamma, lam) gives the
            advantages (whitened over the rollout) and the λ-returns.
  updates   ppo.epochs passes; each shuffles the rollout and cuts it into num_mini_batches minibatches (one
            optimizer step each, in gradient_accumulation_steps micro-batches). Loss: clipped policy loss
            (epsilon) + ppo.vf_coef x clipped value loss (ppo.cliprange_value); both are token means per
            completion, then means over completions.

The value head (hidden_size + 1 weights, zero-initialised: V = 0 before RL) shares the policy's body, as in the
paper, but is not part of the saved model: it is trained by the same optimizer and written as
`value_head.safetensors` beside the model or adapter in every checkpoint and in the stage's `final/`. The
reference model is the warm-up's weights: for adapters a frozen copy of the warm-up adapter ("ref", dropped
before the final save, as TRL does for GRPO), for full weights a frozen copy of the model (none when beta is 0).

Overridden Trainer methods (no other hook fits): `get_train_dataloader` (Q questions per batch, each batch
repeated for every micro-step of its rollout), `_prepare_inputs` (rollout, then the micro-batch of this step),
`compute_loss`, `create_optimizer` and `_clip_grad_norm`/`_get_grad_norm` (the value head is not a module of
the model), `save_model`/`_save_checkpoint`/`train` (the value head and, for a checkpoint inside a rollout, the
rollout itself, so `--resume` continues exactly), `log` (PPO's metrics), `_track_num_input_tokens` and
`floating_point_ops` (the dataloader yields question rows, not token ids; tokens are counted per micro-batch).
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunekit.data.templates import generation_prompts
from tunekit.errors import UserError
from tunekit.trainers import ppo_losses as losses
from tunekit.trainers.training_args import add_tokens_seen, training_kwargs

if TYPE_CHECKING:
    from tunekit.recipe.schema import Recipe

VALUE_HEAD = "value_head.safetensors"
ROLLOUT = "ppo_rollout.safetensors"  # in a checkpoint taken inside a rollout
TENSORS = ("input_ids", "attention_mask", "mask", "old_logp", "old_values", "advantages", "returns", "order")


def build(recipe: Recipe, model: Any, tokenizer: Any, train_ds: Any, funcs: list, weights: list,
          checkpoint_dir: str, callbacks: list) -> Any:
    from transformers import TrainingArguments

    rl = recipe.trainer.rl
    args = TrainingArguments(**training_kwargs(recipe.model_copy(update={"trainer": rl}), checkpoint_dir, False))
    return trainer_class()(model=model, args=args, train_dataset=train_ds, processing_class=tokenizer,
                           callbacks=callbacks, ppo=PPO(rl, model, tokenizer, funcs, weights))


def _rows(rows: list[dict]) -> list[dict]:
    return rows  # the question rows as they are: the rollout tokenizes the prompts itself


class RolloutSampler:
    """Question indices: a seeded permutation per epoch, cut into batches of `size`, each batch yielded `repeat`
    times in a row (once per micro-step of its rollout; only full batches)."""

    def __init__(self, n: int, size: int, repeat: int, seed: int) -> None:
        self.n, self.size, self.repeat, self.seed, self.epoch = n, size, repeat, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return (self.n // self.size) * self.size * self.repeat

    def __iter__(self) -> Any:
        import torch

        order = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed + self.epoch)).tolist()
        for start in range(0, len(order) - self.size + 1, self.size):
            for _ in range(self.repeat):
                yield from order[start:start + self.size]


class PPO:
    """PPO's state beside the Trainer: settings, rewards, value head, reference, current rollout, metrics."""

    def __init__(self, rl: Any, model: Any, tokenizer: Any, funcs: list, weights: list) -> None:
        import copy

        import torch
        from trl.trainer.utils import disable_dropout_in_model

        self.rl, self.cfg, self.tokenizer, self.funcs, self.weights = rl, rl.ppo, tokenizer, funcs, weights
        self.batch = rl.per_device_batch_size
        self.rollout_size = rl.per_device_batch_size * rl.gradient_accumulation_steps * rl.ppo.num_mini_batches
        self.questions = self.rollout_size // rl.num_generations
        self.micro_steps = rl.ppo.epochs * rl.ppo.num_mini_batches * rl.gradient_accumulation_steps  # per rollout
        disable_dropout_in_model(model)  # old and new log-probabilities must come from the same function
        self.value_head = torch.nn.Linear(model.config.get_text_config().hidden_size, 1).to(model.device)
        torch.nn.init.zeros_(self.value_head.weight)
        torch.nn.init.zeros_(self.value_head.bias)
        self.ref_model, self.ref_adapter = None, False
        if rl.beta > 0 and hasattr(model, "peft_config"):
            _add_reference_adapter(model)
            self.ref_adapter = True
        elif rl.beta > 0:
            self.ref_model = copy.deepcopy(model).eval().requires_grad_(False)
        eos = model.generation_config.eos_token_id
        self.eos = sorted({*(eos if isinstance(eos, list) else [eos] if eos is not None else []),
                           *([tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else [])})
        self.rollout: dict | None = None
        self.micro: int | None = None  # micro-steps done; set from global_step on the first step of train()
        self.metrics: dict[str, list[float]] = defaultdict(list)

    # ------------------------------------------------------------------------------------------- the rollout
    def next_micro_batch(self, model: Any, rows: list[dict], global_step: int) -> dict:
        if self.micro is None:
            self.micro = global_step * self.rl.gradient_accumulation_steps
        k = self.micro % self.micro_steps
        if self.micro % self.rl.gradient_accumulation_steps == 0:  # a new optimizer step: the Trainer zeroes the
            self.value_head.zero_grad(set_to_none=True)              # model's gradients, not the head's
        if k == 0 or self.rollout is None:  # None inside a rollout: a checkpoint without its rollout (not ours)
            self.rollout = self.make_rollout(model, rows)
        self.micro += 1
        for key, value in self.rollout["stats"].items():
            self.metrics[key].append(value)
        per_pass = self.micro_steps // self.cfg.epochs
        idx = self.rollout["order"][k // per_pass][(k % per_pass) * self.batch:(k % per_pass + 1) * self.batch]
        return {key: self.rollout[key][idx] for key in TENSORS if key != "order"}

    def make_rollout(self, model: Any, rows: list[dict]) -> dict:
        import torch

        rl = self.rl
        seqs = self.sample(model, rows)
        clipped = seqs.pop("clipped")
        scores, reward_means = self.score(rows, seqs.pop("texts"))
        mask = seqs["mask"]
        with torch.no_grad():
            old_logp, old_values = self.forward_in_batches(model, seqs)
            kl = (old_logp - self.reference_logp(model, seqs)) * mask if rl.beta > 0 else torch.zeros_like(old_logp)
        rewards = -rl.beta * kl
        lengths = mask.sum(-1).long()
        rewards[torch.arange(len(lengths)), lengths - 1] += scores.to(rewards.device)
        advantages, returns = losses.gae(rewards, old_values * mask, mask, self.cfg.gamma, self.cfg.lam)
        if self.cfg.whiten_advantages:
            advantages = losses.whiten(advantages, mask)
        order = torch.stack([torch.randperm(len(lengths)) for _ in range(self.cfg.epochs)])
        stats = {**reward_means, **self.metrics_of_rollout(scores, kl, mask, old_values, returns, clipped)}
        return {**seqs, "old_logp": old_logp, "old_values": old_values * mask, "advantages": advantages,
                "returns": returns, "order": order, "stats": stats}

    def sample(self, model: Any, rows: list[dict]) -> dict:
        """num_generations completions per question from the current policy; token ids and masks."""
        import torch

        rl, tok = self.rl, self.tokenizer
        texts = generation_prompts(tok, [r["prompt"] for r in rows])
        side, tok.padding_side = tok.padding_side, "left"
        try:
            enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
        finally:
            tok.padding_side = side
        was_training = model.training
        model.eval()
        with torch.no_grad():
            out = model.generate(**enc, do_sample=True, temperature=rl.temperature, top_p=rl.top_p, top_k=rl.top_k,
                                 max_new_tokens=rl.max_completion_length, num_return_sequences=rl.num_generations,
                                 pad_token_id=tok.pad_token_id, eos_token_id=self.eos)
        model.train(was_training)
        completion = out[:, enc["input_ids"].shape[1]:]
        ends = torch.isin(completion, torch.tensor(self.eos, device=completion.device))
        last = torch.where(ends.any(-1), ends.int().argmax(-1), completion.shape[1] - 1)
        mask = (torch.arange(completion.shape[1], device=completion.device)[None] <= last[:, None]).long()
        prompt_mask = enc["attention_mask"].repeat_interleave(rl.num_generations, 0)
        decoded = [tok.decode(ids[:n], skip_special_tokens=True) for ids, n in zip(completion, mask.sum(-1))]
        return {"input_ids": out, "attention_mask": torch.cat([prompt_mask, mask], 1), "mask": mask.float(),
                "texts": decoded, "clipped": (~ends.any(-1)).float()}

    def score(self, rows: list[dict], completions: list[str]) -> tuple[Any, dict]:
        """The recipe's weighted reward per completion (None counts as 0), and each function's mean."""
        import torch

        g = self.rl.num_generations
        prompts = [r["prompt"] for r in rows for _ in range(g)]
        columns = {k: [r[k] for r in rows for _ in range(g)] for k in rows[0] if k != "prompt"}
        total, means = torch.zeros(len(completions)), {}
        for f, w in zip(self.funcs, self.weights):
            values = torch.tensor([float("nan") if v is None else v for v in f(prompts=prompts,
                                   completions=completions, **columns)], dtype=torch.float32)
            means[f"rewards/{f.__name__}/mean"] = float(values.nanmean())
            total += w * values.nan_to_num(0.0)
        return total, {k: v for k, v in means.items() if v == v}  # None for every completion: nothing logged

    def metrics_of_rollout(self, scores: Any, kl: Any, mask: Any, values: Any, returns: Any, clipped: Any) -> dict:
        stats = {"reward": float(scores.mean()), "reward_std": float(scores.std()) if len(scores) > 1 else 0.0,
                 "completions/mean_length": float(mask.sum(-1).mean()), "completions/clipped_ratio": float(clipped.mean()),
                 "value/explained_variance": losses.explained_variance(values * mask, returns, mask)}
        if self.rl.beta > 0:
            stats["kl"] = float(losses.masked_mean(kl, mask))
        return stats

    # ------------------------------------------------------------------------------------------ forward passes
    def forward(self, model: Any, batch: dict) -> tuple[Any, Any, Any]:
        """Per completion token: log π(token) at the sampling temperature, V(state before it), and the logits."""
        import torch

        mask = batch["attention_mask"]
        steps = batch["mask"].shape[1]
        out = model(input_ids=batch["input_ids"], attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
                    output_hidden_states=True, logits_to_keep=steps + 1, use_cache=False)
        logits = out.logits[:, :-1].float() / self.rl.temperature
        tokens = batch["input_ids"][:, -steps:]
        logp = logits.gather(-1, tokens.unsqueeze(-1)).squeeze(-1) - logits.logsumexp(-1)
        with torch.autocast(device_type=logits.device.type, enabled=False):  # the head computes in float32
            values = self.value_head(out.hidden_states[-1][:, -steps - 1:-1].float()).squeeze(-1)
        return logp, values, logits

    def forward_in_batches(self, model: Any, seqs: dict) -> tuple[Any, Any]:
        import torch

        parts = [self.forward(model, {k: seqs[k][i:i + self.batch] for k in ("input_ids", "attention_mask", "mask")})
                 for i in range(0, len(seqs["input_ids"]), self.batch)]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])

    def reference_logp(self, model: Any, seqs: dict) -> Any:
        if not self.ref_adapter:
            return self.forward_in_batches(self.ref_model, seqs)[0]
        from trl.trainer.utils import use_adapter

        with use_adapter(model, adapter_name="ref"):
            return self.forward_in_batches(model, seqs)[0]

    def loss(self, model: Any, batch: dict) -> Any:
        import torch

        logp, values, logits = self.forward(model, batch)
        mask = batch["mask"]
        pg, clipfrac, approx_kl = losses.policy_loss(logp, batch["old_logp"], batch["advantages"], mask, self.rl.epsilon)
        vf, vf_clipfrac = losses.value_loss(values, batch["old_values"], batch["returns"], mask, self.cfg.cliprange_value)
        with torch.no_grad():
            entropy = logits.logsumexp(-1) - (logits.softmax(-1) * logits).sum(-1)
        for key, value in (("loss/policy", pg), ("loss/value", vf), ("policy/clipfrac", clipfrac),
                           ("policy/approxkl", approx_kl), ("entropy", losses.masked_mean(entropy, mask)),
                           ("value/clipfrac", vf_clipfrac)):
            self.metrics[key].append(float(value.detach()))
        return pg + self.cfg.vf_coef * vf

    # ------------------------------------------------------------------------------------- saving, resuming
    def save_value_head(self, directory: Path) -> None:
        from safetensors.torch import save_file

        save_file({k: v.detach().cpu().contiguous() for k, v in self.value_head.state_dict().items()},
                  str(directory / VALUE_HEAD))

    def save_rollout(self, checkpoint: Path) -> None:
        """The rollout whose updates are not all done yet, so that --resume goes on with the same samples."""
        from safetensors.torch import save_file

        if self.rollout is not None:
            save_file({k: self.rollout[k].cpu().contiguous() for k in TENSORS}, str(checkpoint / ROLLOUT),
                      metadata={"stats": json.dumps(self.rollout["stats"])})

    def start(self, checkpoint: str | None) -> None:
        """At train(): from scratch, or the value head (and a rollout in progress) of the resumed checkpoint."""
        from safetensors import safe_open
        from safetensors.torch import load_file

        self.rollout, self.micro = None, None
        if not checkpoint:
            return
        ckpt = Path(checkpoint)
        if not (ckpt / VALUE_HEAD).is_file():
            raise UserError(f"--resume: {ckpt} has no {VALUE_HEAD} (the PPO value head); it was not written "
                            "by a ppo stage. Resume with the algorithm that wrote it, or start the stage again")
        device = str(self.value_head.weight.device)
        self.value_head.load_state_dict(load_file(str(ckpt / VALUE_HEAD), device=device))
        if (ckpt / ROLLOUT).is_file():
            self.rollout = dict(load_file(str(ckpt / ROLLOUT), device=device))
            with safe_open(str(ckpt / ROLLOUT), framework="pt") as f:
                self.rollout["stats"] = json.loads(f.metadata()["stats"])

    def train_value_head(self, optimizer: Any) -> Any:
        """The Trainer's optimizer with the value head as one more parameter group (no weight decay)."""
        head = list(self.value_head.parameters())
        if not any(p is head[0] for group in optimizer.param_groups for p in group["params"]):
            optimizer.add_param_group({"params": head, "weight_decay": 0.0})
        return optimizer

    def inside_rollout(self) -> bool:
        """Whether the last optimizer step left updates of the current rollout to do (a checkpoint keeps it)."""
        return self.micro is not None and self.micro % self.micro_steps != 0

    def to(self, device: Any) -> None:
        self.value_head.to(device)
        if self.ref_model is not None:
            self.ref_model.to(device)

    def drain_metrics(self) -> dict:
        means = {k: sum(v) / len(v) for k, v in self.metrics.items() if v}
        self.metrics.clear()
        return means


def _add_reference_adapter(model: Any) -> None:
    """A frozen copy of the warm-up adapter named "ref" (as TRL's GRPOTrainer keeps one): the KL reference."""
    model.add_adapter("ref", model.peft_config["default"])
    for name, param in model.named_parameters():
        if ".default." in name:
            ref = model.get_parameter(name.replace(".default.", ".ref."))
            ref.data.copy_(param.data)
            ref.requires_grad_(False)


def trainer_class() -> type:
    """transformers' Trainer with PPO's rollout and loss (see the module docstring for why each override)."""
    from transformers import Trainer
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

    class PPOTrainer(Trainer):
        def __init__(self, *, ppo: PPO, **kwargs: Any) -> None:
            super().__init__(data_collator=_rows, **kwargs)
            self.ppo = ppo
            ppo.to(self.model.device)  # beside the model, where the Trainer placed it
            self.model_accepts_loss_kwargs = False  # the loss is a mean per micro-batch: the Trainer divides by GA

        def get_train_dataloader(self) -> Any:
            sampler = RolloutSampler(len(self.train_dataset), self.ppo.questions, self.ppo.micro_steps, self.args.seed)
            return self._get_dataloader(dataset=self.train_dataset, description="Training", is_training=True,
                                        batch_size=self.ppo.questions, sampler_fn=lambda ds: sampler)

        def _prepare_inputs(self, rows: Any) -> dict:  # the question rows of the rollout (see _rows)
            batch = self.ppo.next_micro_batch(self.accelerator.unwrap_model(self.model), rows, self.state.global_step)
            add_tokens_seen(self, batch["attention_mask"].sum())
            return batch

        def compute_loss(self, model: Any, inputs: dict, return_outputs: bool = False, num_items_in_batch: Any = None) -> Any:
            return self.ppo.loss(model, inputs)

        def create_optimizer(self, model: Any = None) -> Any:
            return self.ppo.train_value_head(super().create_optimizer(model))

        def _clip_grad_norm(self, model: Any, max_norm: float | None = None) -> Any:
            params = [*model.parameters(), *self.ppo.value_head.parameters()]
            return self.accelerator.clip_grad_norm_(params, self.args.max_grad_norm if max_norm is None else max_norm)

        def _get_grad_norm(self, model: Any, grad_norm: Any = None) -> Any:
            grad_norm = self._clip_grad_norm(model, float("inf")) if grad_norm is None else grad_norm
            return super()._get_grad_norm(model, grad_norm=grad_norm)

        def log(self, logs: dict, start_time: float | None = None) -> None:
            super().log({**logs, **self.ppo.drain_metrics()} if "loss" in logs else logs, start_time)

        def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
            super().save_model(output_dir, _internal_call)
            if self.args.should_save:
                self.ppo.save_value_head(Path(output_dir or self.args.output_dir))

        def _save_checkpoint(self, model: Any, trial: Any) -> None:
            super()._save_checkpoint(model, trial)
            if self.args.should_save and self.ppo.inside_rollout():
                self.ppo.save_rollout(Path(self.args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")

        def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs: Any) -> Any:
            self.ppo.start(resume_from_checkpoint if isinstance(resume_from_checkpoint, str) else None)
            return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)

        def _track_num_input_tokens(self, inputs: Any) -> None:
            pass  # counted per micro-batch in _prepare_inputs

        def floating_point_ops(self, inputs: Any) -> int:
            return 0  # not estimated (tunekit reports no FLOPs)

    return PPOTrainer
