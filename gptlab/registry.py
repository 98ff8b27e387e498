"""The model registry: the one place that builds a model. A model is named by ModelConfig.model: a
built-in ("gpt", the default, registered in BUILTIN_MODELS) or an idea ("path/idea.py:Class",
"package.module:Class", loaded by gptlab.ideas). Contract (README, "Your own idea"): Module(config);
forward(idx, return_hidden=False); optional init_weights(), flops_per_token(seq_len), new_cache()."""

from __future__ import annotations

import torch.nn as nn

from gptlab import ideas
from gptlab.config import BUILTIN_MODEL_NAMES, ModelConfig, is_builtin
from gptlab.errors import UserError
from gptlab.model import GPT

BUILTIN_MODELS: dict[str, type[nn.Module]] = {"gpt": GPT}
GPT_FLOPS_NOTE = "6N + 12*L*H*Q*T"
assert tuple(BUILTIN_MODELS) == BUILTIN_MODEL_NAMES, ("gptlab.config.BUILTIN_MODEL_NAMES names them "
                                                      "for the schema")


def load(model_config: ModelConfig) -> ideas.Idea:
    """The class the config names; an idea's file or module is executed (once per distinct source)."""
    return load_spec(model_config.model)


def load_spec(spec: str) -> ideas.Idea:
    """The class a --model value names (a built-in, or an idea's file or module, executed once)."""
    return ideas.load_idea(spec, BUILTIN_MODELS)


def resolve_model(model_config: ModelConfig, idea: ideas.Idea | None = None) -> ideas.Idea:
    """Load the model's class and complete model_config in place: every option the idea declares, typed
    (an unknown key is a UserError), the source's sha256, and a file's path made absolute."""
    idea = idea or load(model_config)
    model_config.options = ideas.resolve_options(idea, model_config.options)
    model_config.model_sha256 = idea.sha256
    if idea.spec.kind == "file":
        model_config.model = f"{idea.source.resolve()}:{idea.spec.class_name}"
    return idea


def build_model(model_config: ModelConfig, idea: ideas.Idea | None = None) -> nn.Module:
    """The model the config describes, allocated (on the default or current meta device), not
    initialised. An idea is built from `idea` when given (a run's recorded copy), else from its spec, and
    must be the source config.model_sha256 records when it records one."""
    if is_builtin(model_config.model):
        return BUILTIN_MODELS[model_config.model.strip().lower()](model_config)
    idea = idea or load(model_config)
    if model_config.model_sha256 and idea.sha256 != model_config.model_sha256:
        raise UserError(ideas.changed_message(idea, model_config.model_sha256))
    config = ideas.idea_config(model_config, ideas.resolve_options(idea, model_config.options))
    try:
        model = idea.cls(config)
    except Exception as e:  # the idea's own code: its file and line, in one line
        raise UserError(ideas.failure_line(e, idea.source, f"building {idea.name}")) from None
    own = getattr(model, "config", None)
    if own is None:
        model.config = config  # gptlab reads config.vocab_size and config.block_size
    elif not (hasattr(own, "vocab_size") and hasattr(own, "block_size")):
        raise UserError(f"{idea.name}: self.config must be the config the constructor received (gptlab "
                        "reads its vocab_size and block_size): store your own settings under another "
                        "name")
    return model


def init_weights(model: nn.Module) -> nn.Module:
    """Draw the initial weights where the model defines how; its construction's draws otherwise."""
    if hasattr(model, "init_weights"):
        model.init_weights()
    return model


def flops_per_token(model: nn.Module, seq_len: int) -> float:
    """Training FLOPs per token: the model's own flops_per_token(seq_len) (the GPT's analytic
    6N + 12*L*H*Q*T), else counted by torch's FLOP counter on one sequence (flops_note says which)."""
    own = getattr(model, "flops_per_token", None)
    if callable(own):
        return own(seq_len)
    return ideas.count_flops_per_token(lambda: type(model)(model.config), seq_len)


def flops_note(model: nn.Module) -> str:
    """Where flops_per_token's figure comes from, for output next to FLOPs and MFU."""
    if isinstance(model, GPT):
        return GPT_FLOPS_NOTE
    return "the model's flops_per_token" if callable(getattr(model, "flops_per_token",
                                                             None)) else ideas.COUNTED_NOTE


# Where a model keeps its repeated blocks: gptlab's GPT, and the names ideas commonly use.
BLOCK_LISTS = ("transformer.h", "blocks", "layers", "h")


def blocks(model: nn.Module) -> list[nn.Module]:
    """The model's repeated blocks (FSDP2's shard units, per-block compile): the first nn.ModuleList
    among BLOCK_LISTS; none for a model that keeps them elsewhere (it is then one unit)."""
    for path in BLOCK_LISTS:
        found = model
        for part in path.split("."):
            found = getattr(found, part, None)
        if isinstance(found, nn.ModuleList):
            return list(found)
    return []


def parameter_count(model: nn.Module, non_embedding: bool = False) -> int:
    """Parameters, a tied matrix once (parameters() yields it once); non_embedding leaves out the
    position embeddings of a model that has them, as nanoGPT's get_num_params does."""
    total = sum(p.numel() for p in model.parameters())
    position = getattr(getattr(model, "transformer", None), "wpe", None)
    if non_embedding and position is not None:
        total -= position.weight.numel()
    return total
