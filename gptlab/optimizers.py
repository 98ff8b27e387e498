"""Optimisers beyond Adam(W): the built-in `muon`, and the pieces an optimiser idea may use.

`--optimizer muon`: torch.optim.Muon for the hidden matrices (the 2-D weights inside the model's
repeated blocks, i.e. under an nn.ModuleList) and AdamW for everything else (embeddings, the output
head, gains and biases), stepped together as one ChainedOptimizer. Muon's learning rate is adjusted
per matrix as Moonshot's "match_rms_adamw" does (0.2 * sqrt(max(A, B)) times the schedule's lr), so the
one schedule of --learning_rate drives both parts; torch's own Muon defaults are lr 1e-3, momentum
0.95 (Nesterov), weight decay 0.1, 5 Newton-Schulz steps and Keller Jordan's "original" adjustment.

An optimiser idea is a function (model, config) -> optimiser, named as --optimizer path/opt.py:function
or package.module:function and loaded as gptlab.ideas loads a model idea (its file's sha256 recorded in
config.json, the file copied into the run folder); it may build several torch optimisers and return
ChainedOptimizer(...) of them. The learning-rate schedule sets each param group's lr to its "lr_scale"
x the scheduled rate; a group without one keeps the ratio of the lr it was built with to
--learning_rate."""

from __future__ import annotations

import torch
import torch.nn as nn

from gptlab import ideas
from gptlab.config import BUILTIN_OPTIMIZERS, OptimConfig
from gptlab.errors import UserError

MUON_DEFAULTS = dict(momentum=0.95, nesterov=True, ns_steps=5, adjust_lr_fn="match_rms_adamw")


class ChainedOptimizer:
    """Several torch optimisers over disjoint parameters, stepped as one. Its state_dict has torch's
    format ({"state", "param_groups"}, parameters numbered across the parts in order), so a checkpoint
    holds it like any optimiser and load_state_dict restores each part exactly."""

    def __init__(self, *optimizers: torch.optim.Optimizer):
        self.optimizers = [o for o in optimizers if o.param_groups]
        self.defaults: dict = {}  # no fused flag: the training step skips a non-finite update itself

    @property
    def param_groups(self) -> list[dict]:
        return [group for optimizer in self.optimizers for group in optimizer.param_groups]

    @property
    def state(self) -> dict:
        return {p: s for optimizer in self.optimizers for p, s in optimizer.state.items()}

    def step(self, closure=None) -> None:
        if closure is not None:
            raise ValueError("ChainedOptimizer.step takes no closure")
        for optimizer in self.optimizers:
            optimizer.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=set_to_none)

    def _sizes(self) -> list[tuple[int, int]]:
        """(param groups, parameters) of each part."""
        return [
            (len(o.param_groups), sum(len(g["params"]) for g in o.param_groups)) for o in self.optimizers
        ]

    def state_dict(self) -> dict:
        state, groups, offset = {}, [], 0
        for optimizer, (_, n_params) in zip(self.optimizers, self._sizes()):
            part = optimizer.state_dict()
            state.update({index + offset: value for index, value in part["state"].items()})
            groups += [
                dict(group, params=[i + offset for i in group["params"]])
                for group in part["param_groups"]
            ]
            offset += n_params
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict) -> None:
        groups, first_group, offset = state_dict["param_groups"], 0, 0
        if len(groups) != sum(n for n, _ in self._sizes()):
            raise ValueError(
                f"the state holds {len(groups)} param groups, this optimiser {len(self.param_groups)}"
            )
        for optimizer, (n_groups, n_params) in zip(self.optimizers, self._sizes()):
            mine = groups[first_group : first_group + n_groups]
            optimizer.load_state_dict(
                {
                    "state": {
                        i - offset: v
                        for i, v in state_dict["state"].items()
                        if offset <= i < offset + n_params
                    },
                    "param_groups": [dict(g, params=[i - offset for i in g["params"]]) for g in mine],
                }
            )
            first_group, offset = first_group + n_groups, offset + n_params


def hidden_matrices(model: nn.Module) -> list[nn.Parameter]:
    """The 2-D weights inside the model's repeated blocks (any nn.ModuleList), embeddings excluded."""
    found: dict[int, nn.Parameter] = {}
    for blocks in (m for m in model.modules() if isinstance(m, nn.ModuleList)):
        for module in blocks.modules():
            if isinstance(module, nn.Embedding):
                continue
            for parameter in module.parameters(recurse=False):
                if parameter.dim() == 2 and parameter.requires_grad:
                    found[id(parameter)] = parameter
    return list(found.values())


def muon_with_adamw(
    model: nn.Module, config, device_type: str = "cpu", **muon_settings
) -> ChainedOptimizer:
    """torch.optim.Muon on hidden_matrices(model), AdamW on the rest (decay on >= 2-D weights only), both
    at the config's learning rate and weight decay; muon_settings override MUON_DEFAULTS."""
    o = config.optim
    if any(hasattr(p, "full_tensor") for p in model.parameters()):  # FSDP2 made them DTensor shards
        raise UserError(
            "--optimizer muon orthogonalises whole matrices, and FSDP2 gives each rank shards of them: "
            "train it with --parallel ddp (or one process)"
        )
    matrices = hidden_matrices(model)
    if not matrices:
        raise ValueError("the model has no 2-D weights inside an nn.ModuleList of blocks for Muon")
    chosen = {id(p) for p in matrices}
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in chosen]
    muon = torch.optim.Muon(
        matrices, lr=o.learning_rate, weight_decay=o.weight_decay, **dict(MUON_DEFAULTS, **muon_settings)
    )
    groups = [
        {"params": [p for p in rest if p.dim() >= 2], "weight_decay": o.weight_decay},
        {"params": [p for p in rest if p.dim() < 2], "weight_decay": 0.0},
    ]
    adamw = torch.optim.AdamW(
        [g for g in groups if g["params"]],
        lr=o.learning_rate,
        betas=(o.beta1, o.beta2),
        eps=o.eps,
        fused=device_type in ("cuda", "cpu"),
    )
    return ChainedOptimizer(muon, adamw)


# ------------------------------------------------------------------------------ optimiser ideas

OPTIMIZER_METHODS = ("param_groups", "step", "zero_grad", "state_dict", "load_state_dict")


def load_idea(spec: str) -> ideas.Loaded:
    """The function --optimizer names (its file executed once, from the bytes hashed)."""
    loaded = ideas.load_object(
        spec, dict.fromkeys(BUILTIN_OPTIMIZERS), flag="--optimizer", noun="function"
    )
    if isinstance(loaded.obj, type) or not callable(loaded.obj):
        raise UserError(
            f"--optimizer {spec}: {loaded.spec.class_name} is {type(loaded.obj).__name__}, not a "
            "function (model, config) -> optimiser: name the function"
        )
    return loaded


def resolve_idea(optim_config: OptimConfig) -> ideas.Loaded | None:
    """Load an optimiser idea and record it in optim_config in place: its source's sha256, a file's path
    made absolute; None for a built-in optimiser."""
    if optim_config.optimizer in BUILTIN_OPTIMIZERS:
        return None
    loaded = load_idea(optim_config.optimizer)
    optim_config.optimizer_sha256 = loaded.sha256
    if loaded.spec.kind == "file":
        optim_config.optimizer = f"{loaded.source.resolve()}:{loaded.spec.class_name}"
    return loaded


def from_idea(model: nn.Module, config, loaded: ideas.Loaded | None = None):
    """The optimiser an idea's function builds, checked: torch's optimiser methods, every trainable
    parameter in exactly one group; each group's lr_scale set (see the module docstring)."""
    o = config.optim
    loaded = loaded or load_idea(o.optimizer)
    name = loaded.spec.text
    if o.optimizer_sha256 and loaded.sha256 != o.optimizer_sha256:
        raise UserError(
            f"--optimizer {name}: the file has changed since the run recorded it (sha256 "
            f"{o.optimizer_sha256[:12]}..., now {loaded.sha256[:12]}...): restore it, or start a new "
            "run (without --resume)"
        )
    try:
        optimizer = loaded.obj(model, config)
    except Exception as e:  # the idea's own code: its file and line, in one line
        raise UserError(ideas.failure_line(e, loaded.source, f"building the optimiser {name}")) from None
    missing = [m for m in OPTIMIZER_METHODS if not hasattr(optimizer, m)]
    if missing:
        raise UserError(
            f"--optimizer {name} returned {type(optimizer).__name__}, which lacks {', '.join(missing)}: "
            "return a torch optimiser (or gptlab.optimizers.ChainedOptimizer of several)"
        )
    held = [id(p) for group in optimizer.param_groups for p in group["params"]]
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    if len(held) != len(set(held)) or set(held) != trainable:
        raise UserError(
            f"--optimizer {name} must hold every trainable parameter of the model exactly once; "
            f"it holds {len(set(held) & trainable)} of {len(trainable)} (and "
            f"{len(held) - len(set(held))} twice, {len(set(held) - trainable)} foreign): fix its param "
            "groups"
        )
    for group in optimizer.param_groups:
        group.setdefault("lr_scale", group["lr"] / o.learning_rate)
    return optimizer
