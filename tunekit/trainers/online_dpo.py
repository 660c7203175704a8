"""`online_dpo`: TRL's experimental OnlineDPOTrainer, with the pair it trains on chosen by tunekit.

TRL samples two completions per prompt and prefers the first when their rewards are equal (`first >= second`). With
a verifiable reward (the answer is right or wrong) most pairs are ties early on (both wrong) and late (both right):
a DPO step on a tie pushes the policy towards one arbitrary sample and away from an equally good one, noise that
drowns the signal of the few informative pairs. tunekit samples `num_generations` completions per prompt, scores them
with the same reward functions, and hands TRL the best and the worst (the first of equal scores). When every sample
of a prompt ties, `ties: skip` (the default) hands the best sample as both chosen and rejected: its DPO logit is
exactly zero, so that prompt adds a constant (log 2 for `sigmoid`) to the loss and nothing but float rounding to the
gradient (tests/unit/test_online_dpo.py); `ties: keep` is TRL's behaviour (an arbitrary order of two samples).
`objective/tied_pairs` logs the fraction of prompts whose samples all tied; TRL's `rewards/accuracies` counts a
self-pair as a miss (margin 0).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tunekit.trainers.rewards import REWARD_COLUMNS, build_reward_funcs
from tunekit.trainers.training_args import add_tokens_seen, training_kwargs

if TYPE_CHECKING:
    from tunekit.recipe.schema import Recipe


def pick_pairs(rewards: Any, ties: str) -> tuple[Any, Any, Any]:
    """rewards: (num_generations, prompts). Per prompt (best sample, worst sample, all tied); a tie is paired with
    itself under `skip`, with the next sample under `keep` (TRL's arbitrary order)."""
    import torch

    best, worst = rewards.argmax(0), rewards.argmin(0)  # the first of equal values (torch's documented rule)
    tied = rewards.max(0).values == rewards.min(0).values
    other = best if ties == "skip" else (best + 1) % rewards.shape[0]
    return best, torch.where(tied, other, worst), tied


def trainer_class() -> type:
    from trl.data_utils import is_conversational
    from trl.experimental.online_dpo import OnlineDPOTrainer

    class TunekitOnlineDPOTrainer(OnlineDPOTrainer):
        def __init__(self, *args: Any, num_generations: int = 2, ties: str = "skip", **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.tk_generations, self.tk_ties, self.tk_inputs = num_generations, ties, {}
            self.stats["objective/tied_pairs"] = []

        def training_step(self, model: Any, inputs: dict, num_items_in_batch: Any = None) -> Any:
            self.tk_inputs = inputs  # the answer columns, for scoring the samples in `_generate`
            return super().training_step(model, inputs, num_items_in_batch)

        def _generate(self, model: Any, prompts: list, images: Any = None) -> tuple:
            import torch

            reps = self.tk_generations // 2  # TRL's _generate draws two samples per prompt it is given
            out = super()._generate(model, prompts * reps, images * reps if images is not None else None)
            prompt_ids, prompt_mask, completion_ids, completion_mask, vision = out
            n = len(prompts)  # sample j of prompt i is row i + n * j
            rewards = self._sample_rewards(prompts, completion_ids).view(self.tk_generations, n)
            best, worst, tied = pick_pairs(rewards.cpu(), self.tk_ties)
            self.stats["objective/tied_pairs"].append(tied.float().mean().item())
            rows = torch.arange(n)
            pick = torch.cat([rows + n * best, rows + n * worst]).to(completion_ids.device)
            if vision is not None:
                raise NotImplementedError("tunekit's online_dpo reads text prompts only")
            add_tokens_seen(self, prompt_mask[pick].sum() + completion_mask[pick].sum())  # the pair trained on
            return prompt_ids[pick], prompt_mask[pick], completion_ids[pick], completion_mask[pick], None

        def _track_num_input_tokens(self, inputs: Any) -> None:
            pass  # the batch holds prompts only: the trained pairs are counted in _generate

        def _sample_rewards(self, prompts: list, completion_ids: Any) -> Any:
            """Each sample's reward as TRL computes it in `training_step` (the reward functions' weighted sum, less
            `missing_eos_penalty` for a completion without EOS)."""
            import torch

            reps = len(completion_ids) // len(prompts)
            texts = self.processing_class.batch_decode(completion_ids, skip_special_tokens=True)
            completions: list = ([[{"role": "assistant", "content": t}] for t in texts]
                                 if is_conversational({"prompt": prompts[0]}) else texts)
            columns = {k: list(v) * reps for k, v in self.tk_inputs.items()
                       if k != "prompt" and isinstance(v, (list, tuple))}
            rewards = self._calculate_rewards_from_functions(
                prompts=prompts * reps, completions=completions,
                completion_ids_list=[c.tolist() for c in completion_ids], **columns)
            if self.args.missing_eos_penalty is not None:
                eos = torch.tensor(self.eos_token_ids, device=completion_ids.device)
                rewards[~torch.isin(completion_ids, eos).any(-1)] -= self.args.missing_eos_penalty
            return rewards

    return TunekitOnlineDPOTrainer


def build_online_dpo(recipe: Recipe, model: Any, tokenizer: Any, train_ds: Any, eval_ds: Any, checkpoint_dir: str,
                     callbacks: list) -> Any:
    """Online DPO: `num_generations` completions sampled per prompt, ranked by the reward functions against the row's
    answer, a DPO step on the best and the worst (ties: see the module doc). The data stage's held-out split is not
    evaluated by this trainer (its eval needs a reward per sample; `tunekit eval` generation tasks measure it)."""
    from trl.experimental.online_dpo import OnlineDPOConfig

    from tunekit.trainers.preference import base_as_reference, ref_model

    t = recipe.trainer
    funcs, weights = build_reward_funcs(t.rewards)
    args = OnlineDPOConfig(
        **training_kwargs(recipe, checkpoint_dir, False),
        max_new_tokens=t.max_new_tokens, max_length=recipe.data.max_length, temperature=t.temperature,
        top_p=t.top_p, beta=[t.beta], loss_type=t.loss_type, missing_eos_penalty=t.missing_eos_penalty,
        reward_weights=weights,
    )
    columns = train_ds.remove_columns([c for c in train_ds.column_names if c not in REWARD_COLUMNS])
    trainer = trainer_class()(model=model, ref_model=ref_model(recipe), reward_funcs=funcs, args=args,
                              train_dataset=columns, processing_class=tokenizer, callbacks=callbacks,
                              num_generations=t.num_generations, ties=t.ties)
    return base_as_reference(trainer)
