"""`--smoke`: any preset in a minute or two on a CPU, its run folder, logs and evaluation shape kept."""

from __future__ import annotations

import json
import time

from gptlab import cli
from gptlab.config_files import build_config
from gptlab.smoke import SMOKE_STEPS, smoke_overrides, take_smoke_flag
from tests.integration.test_languini import VOCAB, _books_folder


def test_smoke_flag_forms():
    assert take_smoke_flag(["mini", "--smoke", "--seed", "1"]) == (True, ["mini", "--seed", "1"])
    assert take_smoke_flag(["mini", "--smoke=false"]) == (False, ["mini"])
    assert take_smoke_flag(["mini"]) == (False, ["mini"])


def test_smoke_keeps_each_presets_shape():
    for preset in ("mini", "small", "XL", "gpt2", "baby", "shakespeare_char"):
        full = build_config(preset)
        small = build_config(preset, overrides=dict(zip(*[iter(a.lstrip("-") for a in smoke_overrides(full, 2))] * 2)))
        m, t = small.model, small.train
        assert m.n_layer <= 2 and m.n_embd == 64 and t.max_iters == SMOKE_STEPS
        # Languini's heads narrower than the stream stay so; GPT-2's n_head x head_dim = n_embd too
        assert (m.head_dim and m.n_head * m.head_dim != m.n_embd) == bool(full.model.head_dim and
                                                                          full.model.n_head * full.model.head_dim != full.model.n_embd)
        for key in ("tie_embeddings", "embed_scale", "qkv", "gelu", "bias"):
            assert getattr(m, key) == getattr(full.model, key), (preset, key)
        assert (small.data.sampler, small.data.val_split) == (full.data.sampler, full.data.val_split)
        assert bool(t.eval_interval) == bool(full.train.eval_interval) and t.eval_iters == 4


def test_mini_smoke_on_cpu(tmp_path, monkeypatch, capsys, one_thread):
    monkeypatch.chdir(tmp_path)
    _books_folder(tmp_path / "books")
    assert cli.main(["prepare", "books", "--input", "books", "--out", "data/books", "--vocab_size", str(VOCAB),
                     "--num_threads", "1"]) == 0
    start = time.time()
    assert cli.main(["train", "mini", "--smoke", "--dataset", "books", "--device", "cpu", "--progress", "off"]) == 0
    seconds = time.time() - start
    out = capsys.readouterr().out
    (run,) = list((tmp_path / "logs" / "free" / "mini").iterdir())  # the preset's own folder layout
    config = json.loads((run / "config.json").read_text())
    assert config["model"]["n_layer"] == 2 and config["train"]["max_iters"] == SMOKE_STEPS
    assert config["data"]["sampler"] == "stream" and config["model"]["embed_scale"] is True
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    evals = {(r["step"], r["split"]) for r in records if r["kind"] == "eval"}
    assert evals == {(s, split) for s in (10, 20) for split in ("train", "test")}
    assert any(r["kind"] == "grads" for r in records)  # the preset logs gradient statistics: so does its smoke
    assert (run / "checkpoints").is_dir() and "in-training eval:" in out
    print(f"mini --smoke on CPU: {seconds:.1f}s")
    assert seconds < 600  # 2 minutes on 2 free cores; generous for a shared machine
