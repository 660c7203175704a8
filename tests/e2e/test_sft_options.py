"""NEFTune (`trainer.neftune_alpha`): noise on the input embeddings in training forward passes only.

Two in-process runs of the builtin tiny model with the same seed, one without NEFTune and one with alpha 5. A
callback looks at the model when training starts (transformers has installed NEFTune's hook by then): in eval
mode it must compute exactly the un-noised model's logits, in train mode (the tiny model has no dropout, so
train mode alone changes nothing) its embeddings must carry uniform noise bounded by alpha / sqrt(L * d).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.e2e.test_methods import PROBE_IDS, ROWS, method_recipe

ALPHA = 5.0


@pytest.fixture(scope="module")
def data_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return path


def watcher() -> object:
    from transformers import TrainerCallback

    class Watch(TrainerCallback):
        def __init__(self) -> None:
            self.seen: dict = {}

        def on_train_begin(self, args, state, control, model=None, **kw):  # noqa: ANN001
            was, emb = model.training, model.get_input_embeddings()
            with torch.no_grad():
                for mode in (False, True):
                    model.train(mode)
                    torch.manual_seed(1)
                    self.seen[mode] = model(input_ids=PROBE_IDS).logits.float().clone()
                    self.seen[f"emb{mode}"] = emb(PROBE_IDS) - emb.weight[PROBE_IDS]
            model.train(was)

    return Watch()


def run(data: Path, out: Path, alpha: float | None) -> tuple[object, float]:
    from tunekit.pipeline import train

    recipe = method_recipe("full", data, out, max_steps=1)
    recipe = recipe.model_copy(update={"trainer": recipe.trainer.model_copy(update={"neftune_alpha": alpha})})
    watch = watcher()
    train(recipe, callbacks=[watch])
    first = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    return watch, first["loss"]


def test_neftune_adds_noise_in_training_only(data_file: Path, tmp_path: Path) -> None:
    clean, clean_loss = run(data_file, tmp_path / "clean", None)
    noisy, noisy_loss = run(data_file, tmp_path / "noisy", ALPHA)
    # eval mode: no noise, so the same seed gives bit-identical logits with and without NEFTune
    assert torch.equal(noisy.seen[False], clean.seen[False])
    assert torch.equal(clean.seen[True], clean.seen[False])  # no dropout: train mode alone changes nothing
    assert not torch.allclose(noisy.seen[True], clean.seen[True])
    # the noise is uniform in [-alpha / sqrt(L d), alpha / sqrt(L d)] per entry (L = 8 probe tokens, d = 64)
    bound = ALPHA / (PROBE_IDS.shape[1] * 64) ** 0.5
    noise = noisy.seen["embTrue"]
    assert torch.count_nonzero(clean.seen["embTrue"]) == 0 and torch.count_nonzero(noisy.seen["embFalse"]) == 0
    assert noise.abs().max() <= bound * (1 + 1e-5)  # float32 rounding of emb + noise - emb
    assert noise.abs().max() > 0.9 * bound  # 512 uniform draws reach 90% of the bound (P(miss) = 0.9^512)
    print(f"NEFTUNE first-step loss: alpha 0 {clean_loss:.4f}, alpha {ALPHA} {noisy_loss:.4f}")
    assert noisy_loss != pytest.approx(clean_loss, abs=1e-4)  # the training step saw noisy embeddings


@pytest.mark.full  # ~35 s on 2 CPU cores
def test_masked_thought_masks_training_inputs_only(tmp_path: Path) -> None:
    """A real SFT run with `data.masked_thought: 0.2`: every forward pass of the model is recorded (a forward
    pre-hook installed when training starts). Training batches have ~20% of their trained tokens replaced by the
    mask token (the builtin tokenizer has no unk: its pad, id 3) in input_ids, labels keep the original tokens;
    evaluation batches are unmasked."""
    from transformers import TrainerCallback

    from tests.conftest import tiny_recipe
    from tunekit.pipeline import train
    from tunekit.recipe.load import load_recipe

    recipe = load_recipe(tiny_recipe(tmp_path, data={"masked_thought": 0.2, "eval_fraction": 0.1},
                                     trainer={"max_steps": 4, "eval_steps": 2, "per_device_batch_size": 8},
                                     method={"name": "full"}))
    seen: list[tuple[bool, torch.Tensor, torch.Tensor]] = []

    class Record(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kw):  # noqa: ANN001
            def pre(mod, a, kwargs):  # noqa: ANN001, ANN202
                seen.append((mod.training, kwargs["input_ids"].clone(), kwargs["labels"].clone()))

            model.register_forward_pre_hook(pre, with_kwargs=True)

    train(recipe, callbacks=[Record()])
    mask_id = 3
    stats = {True: [0, 0], False: [0, 0]}
    for training, ids, labels in seen:
        trained = labels != -100
        hit = trained & (ids != labels)
        assert torch.all(ids[hit] == mask_id)  # a changed trained token is the mask token
        stats[training][0] += int(hit.sum())
        stats[training][1] += int(trained.sum())
    frac = stats[True][0] / stats[True][1]
    print(f"MASKED_THOUGHT train: {stats[True][0]}/{stats[True][1]} = {frac:.3f}; eval masked {stats[False][0]}")
    assert stats[False][1] > 0 and stats[False][0] == 0  # evaluation inputs are never masked
    # n Bernoulli(0.2) draws (n = 322 trained tokens in 4 steps; 53 masked = 0.165 when written): within 4 sd
    n = stats[True][1]
    assert n > 200 and frac == pytest.approx(0.2, abs=4 * (0.16 / n) ** 0.5)


def test_sft_loss_never_materialises_logits_and_equals_plain_cross_entropy(data_file: Path, tmp_path: Path) -> None:
    """tunekit's SFT trainer computes the loss through TRL's fused LM head: the backbone's hidden states go through
    the LM head in tiles, only at positions with a label, so the (tokens x vocab) logits are never materialised
    (the chunked cross-entropy fast path, on by default). On the first real training batch its loss and every
    trainable gradient equal plain cross-entropy on the full logits (transformers' own loss) to float32
    rounding: 1e-5 relative (the two sum the same terms in a different order)."""
    from transformers import TrainerCallback

    from tunekit.pipeline import train

    class Compare(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, train_dataloader=None, **kw):  # noqa: ANN001
            batch = {k: v for k, v in next(iter(train_dataloader)).items() if k != "seq_lengths"}
            params = [p for p in model.parameters() if p.requires_grad]
            results = []
            for fused in (True, False):
                model.zero_grad()
                loss = model(**batch, fused_lm_head=fused).loss
                loss.backward()
                results.append((loss.detach().clone(), [p.grad.clone() for p in params]))
            model.zero_grad()
            self.results = results
            with torch.no_grad():
                self.fused_logits = getattr(model(**batch, fused_lm_head=True), "logits", None)

    compare = Compare()
    recipe = method_recipe("lora", data_file, tmp_path / "run", max_steps=1)
    train(recipe, callbacks=[compare])
    (fused_loss, fused_grads), (plain_loss, plain_grads) = compare.results
    assert compare.fused_logits is None  # no (tokens x vocab) tensor came back: per-token log-probs only
    assert torch.allclose(fused_loss, plain_loss, rtol=1e-5, atol=0), (fused_loss, plain_loss)
    assert fused_grads and all(torch.allclose(a, b, rtol=1e-5, atol=1e-7) for a, b in zip(fused_grads, plain_grads))
