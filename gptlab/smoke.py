"""`gptlab train PRESET --smoke`: any preset shrunk to a minute or two on a CPU, its shape kept: the
same run-folder layout, logs, checkpoints and evaluation (splits, document streams, last_n share,
cadence relative to the run), on a model of two small layers for SMOKE_STEPS steps. Options the
user passes after the preset still win over the shrinking."""

from __future__ import annotations

from gptlab.args import BOOL_WORDS

SMOKE_STEPS = 20
SMOKE_WIDTH, SMOKE_HEADS, SMOKE_HEAD_DIM, SMOKE_BLOCK = 64, 2, 16, 64
SMOKE_FLAG = "--smoke"


def take_smoke_flag(argv: list[str]) -> tuple[bool, list[str]]:
    """(whether --smoke / --smoke=true was given, argv without it)."""
    found, rest = False, []
    for token in argv:
        flag, eq, value = token.partition("=")
        if flag == SMOKE_FLAG:
            found = BOOL_WORDS.get(value.strip().lower(), True) if eq else True
        else:
            rest.append(token)
    return found, rest


def smoke_overrides(cfg, world_size: int = 1) -> list[str]:
    """`--key value` arguments that shrink `cfg` (a preset's resolved config) and keep its shape."""
    m, t, log = cfg.model, cfg.train, cfg.log
    block = min(m.block_size, SMOKE_BLOCK)
    shrunk = {
        "n_layer": min(m.n_layer, 2), "n_embd": SMOKE_WIDTH, "n_head": SMOKE_HEADS,
        # a head width of its own stays one (Languini: heads narrower than the stream), the 4x MLP
        # likewise
        "head_dim": (SMOKE_HEAD_DIM if m.n_head * m.head_dim != m.n_embd else SMOKE_WIDTH // SMOKE_HEADS)
        if m.head_dim else 0, "mlp_dim": 4 * SMOKE_WIDTH if m.mlp_dim else 0,
        "block_size": block, "max_iters": SMOKE_STEPS, "lr_decay_iters": SMOKE_STEPS,
        "warmup_iters": min(cfg.optim.warmup_iters, 2),
        "eval_interval": SMOKE_STEPS // 2 if t.eval_interval else 0, "eval_iters": 4,
        "log_interval": 5, "log_metrics_every": 5,
        "log_grads_every": SMOKE_STEPS // 2 if log.log_grads_every else 0,
        "checkpoint_interval": SMOKE_STEPS // 2 if t.checkpoint_interval else 0,
    }
    if t.last_n:  # the same share of each window scored
        shrunk["last_n"] = max(1, block // max(1, m.block_size // t.last_n))
    if t.train_batch_size:  # Languini: global batch = streams; a few per rank and micro-step
        shrunk["train_batch_size"] = 2 * world_size * t.gradient_accumulation_steps
    else:  # nanoGPT: micro-batch, accumulation a global count
        shrunk["batch_size"] = min(t.batch_size, 4)
        shrunk["gradient_accumulation_steps"] = world_size
    return [part for key, value in shrunk.items() for part in (f"--{key}", str(value))]
