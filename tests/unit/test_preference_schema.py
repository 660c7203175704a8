"""Preference trainer settings that TRL would silently ignore are recipe errors; advice reaches the console."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from tunekit.trainers.preference_schema import CPOTrainerConfig, DPOTrainerConfig


@pytest.mark.parametrize("loss_type", ["sigmoid", "hinge", "ipo", ["sigmoid", "sft"]])
def test_dpo_label_smoothing_on_a_loss_that_ignores_it_is_refused(loss_type: object) -> None:
    """TRL 1.16 reads label_smoothing only for robust, exo_pair, aot and aot_unpaired: with the sigmoid loss a
    `label_smoothing: 0.2` (cDPO in older TRL and axolotl) gave the same loss and gradient as 0."""
    with pytest.raises(ValidationError, match="label_smoothing 0.2 has no effect with loss_type"):
        DPOTrainerConfig(kind="dpo", loss_type=loss_type, label_smoothing=0.2)
    assert DPOTrainerConfig(kind="dpo", loss_type=loss_type).label_smoothing == 0


@pytest.mark.parametrize("loss_type", ["robust", "exo_pair", "aot", "aot_unpaired", ["sigmoid", "robust"]])
def test_dpo_label_smoothing_is_kept_where_trl_reads_it(loss_type: object) -> None:
    assert DPOTrainerConfig(kind="dpo", loss_type=loss_type, label_smoothing=0.2).label_smoothing == 0.2


def test_cpo_label_smoothing_with_hinge_or_ipo_is_refused() -> None:
    for loss_type in ("hinge", "ipo"):
        with pytest.raises(ValidationError, match="no effect with loss_type"):
            CPOTrainerConfig(kind="cpo", loss_type=loss_type, label_smoothing=0.1)
    assert CPOTrainerConfig(kind="cpo", loss_type="sigmoid", label_smoothing=0.1).label_smoothing == 0.1


def test_kto_weights_advice_reaches_the_console(capsys: pytest.CaptureFixture[str]) -> None:
    """The advice on unbalanced KTO data went to the `trl` logger, which tunekit quiets: it never showed."""
    from tunekit.trainers.preference import _kto_weights_hint

    _kto_weights_hint([True] * 16 + [False] * 8, 1.0, 1.0)
    err = " ".join(capsys.readouterr().err.split())
    assert "warning: KTO: 16 desirable and 8 undesirable rows" in err
    assert "trainer.desirable_weight in [0.5, 0.67]" in err and "trainer.undesirable_weight in [1.5, 2.0]" in err
    _kto_weights_hint([True] * 16 + [False] * 8, 0.6, 1.0)  # within the paper's range: nothing to say
    assert capsys.readouterr().err == ""
