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
