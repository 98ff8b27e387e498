"""GPU checks of the start-up paths (issue 23; skipped without CUDA): evaluation through the compiled
training graph under inductor compiles no second graph and scores what eval mode scores (bf16
rounding apart), and the compile cache folder is where inductor writes its graphs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch._dynamo.utils import counters

from gptlab import startup
from gptlab.config_files import build_config
from gptlab.evaluate import TrainGraphForward, eval_plan, evaluate
from gptlab.model import GPT
from gptlab.train import train_step

DEV = torch.device("cuda")
VOCAB, SEQ, BATCH = 1000, 128, 8


def _model() -> GPT:
    cfg = build_config(
        "gpt2",
        overrides=dict(
            n_layer=2, n_head=4, n_embd=128, block_size=SEQ, vocab_size=VOCAB, dropout=0.0
        ),
    )
    torch.manual_seed(0)
    return GPT(cfg.model).init_weights().to(DEV)


def _graphs() -> int:
    return counters["stats"]["unique_graphs"]


@pytest.mark.parametrize("ce_chunk", [0, 256])
def test_eval_reuses_the_inductor_training_graph(ce_chunk):
    torch._dynamo.reset()
    model = _model()
    compiled = torch.compile(model)
    ctx = torch.autocast("cuda", dtype=torch.bfloat16)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)  # lr 0: the reference sees the same weights
    x = torch.randint(0, VOCAB, (BATCH, SEQ), device=DEV)
    train_step(
        compiled,
        opt,
        torch.amp.GradScaler("cuda", enabled=False),
        [(x, torch.roll(x, -1, 1))],
        ctx=ctx,
        clip=1.0,
        ce_chunk=ce_chunk,
    )
    before = _graphs()
    tokens = np.random.default_rng(0).integers(0, VOCAB, 37 * SEQ).astype(np.uint16)
    plan = eval_plan(
        len(tokens), SEQ, 0, data=tokens
    )  # 36 windows: the last batch is short (padded)
    fast = evaluate(
        compiled,
        tokens,
        SEQ,
        BATCH,
        DEV,
        autocast=ctx,
        plan=plan,
        forward=TrainGraphForward(compiled, BATCH, hidden=ce_chunk > 0),
    )
    torch.cuda.synchronize()
    assert _graphs() == before, "evaluation traced a graph of its own"
    reference = evaluate(
        model, tokens, SEQ, BATCH, DEV, autocast=ctx, plan=plan
    )  # eager, eval mode
    assert fast["loss"] == pytest.approx(reference["loss"], rel=5e-3)  # bf16 logits on both sides
    assert fast["eval_tokens"] == reference["eval_tokens"]


def test_compile_cache_folder_receives_the_graphs(tmp_path, monkeypatch):
    monkeypatch.setenv(
        "TORCHINDUCTOR_CACHE_DIR", ""
    )  # recorded, so that what the call sets is undone
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR")
    monkeypatch.setenv("GPTLAB_CACHE_DIR", str(tmp_path))
    folder = startup.use_compile_cache(DEV, "default")
    assert folder == tmp_path / "inductor"
    torch._dynamo.reset()
    fn = torch.compile(lambda a: torch.nn.functional.gelu(a) * 3)
    a = torch.randn(64, 64, device=DEV, requires_grad=True)
    fn(a).sum().backward()
    written = [p for p in folder.rglob("*") if p.is_file()]
    assert written, "inductor wrote nothing under the gptlab compile cache"
