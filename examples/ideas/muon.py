"""An optimiser idea: Muon with Keller Jordan's settings, on gptlab's baseline model.

    gptlab train baby --optimizer examples/ideas/muon.py:keller_muon
    gptlab compare baseline=small muon=examples/ideas/muon.py:keller_muon \
        --dataset books16384 --compute_class 6h

The built-in `--optimizer muon` adjusts Muon's step to AdamW's RMS ("match_rms_adamw"), so the one
--learning_rate drives both parts. This variant keeps Muon's original per-matrix adjustment,
sqrt(max(1, rows / cols)), and runs its matrices at a fixed peak learning rate of 0.02 (AdamW keeps the
config's), following the learning-rate schedule through each param group's lr_scale.
"""

from gptlab.optimizers import muon_with_adamw

MATRIX_LEARNING_RATE = 0.02


def keller_muon(model, config):
    """Muon (momentum 0.95, Nesterov, 5 Newton-Schulz steps) on the block matrices, AdamW elsewhere."""
    optimizer = muon_with_adamw(model, config, adjust_lr_fn="original")
    muon = optimizer.optimizers[0]
    for group in muon.param_groups:
        group["lr_scale"] = MATRIX_LEARNING_RATE / config.optim.learning_rate
    return optimizer
