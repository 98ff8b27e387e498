"""config.resolve: the one place a run's final config is decided (pure: the input is untouched)."""

from __future__ import annotations

import pytest
import torch

from gptlab.config_files import build_config
from gptlab.errors import UserError
from gptlab.resolve import resolve

CPU = torch.device("cpu")
META = {"vocab_size": 65}


def _resolve(cfg, **kw):
    kw.setdefault("world_size", 1)
    kw.setdefault("device", CPU)
    kw.setdefault("data_meta", META)
    return resolve(cfg, **kw)


@pytest.fixture
def dataset(tmp_path):
    d = tmp_path / "data" / "chars"
    d.mkdir(parents=True)
    (d / "meta.json").write_text("{}")
    return d


def test_languini_preset_on_cpu_resolves_to_fp32_eager_and_leaves_the_input_alone(dataset):
    cfg = build_config("small", overrides={"dataset": str(dataset)})
    before = cfg.to_dict()
    out = _resolve(cfg)
    assert (out.system.dtype, out.system.compile, out.system.ce_chunk) == ("float32", "none", 0)
    assert cfg.to_dict() == before  # pure: nothing edited in place
    assert cfg.system.compile == "auto" and cfg.system.dtype == "float16"


def test_vocab_batch_split_and_absolute_dataset(dataset, monkeypatch):
    monkeypatch.chdir(dataset.parent.parent)
    cfg = build_config("baby", overrides={"dataset": "chars", "data_root": "data", "batch_size": 4,
                                          "gradient_accumulation_steps": 2})
    out = _resolve(cfg, world_size=2)
    assert out.model.vocab_size == 65
    assert out.data.dataset == str(dataset.resolve())
    t = out.train
    assert t.train_batch_size == t.batch_size * t.gradient_accumulation_steps * 2
    # the run folder is named once, recorded absolute; the command's --resume is not the run's
    assert out.log.out_dir.startswith(str(dataset.parent.parent.resolve())) and "bsz" in out.log.out_dir
    assert not _resolve(build_config("baby", overrides={"dataset": str(dataset), "resume": "true"})).train.resume


def test_compute_class_sets_steps_and_decay(dataset):
    cfg = build_config("small", overrides={"dataset": str(dataset), "compute_class": "6h", "tokens_per_second": 55416})
    out = _resolve(cfg)
    steps = round(6 * 3600 * 55416 / (128 * 512))
    assert out.train.max_iters == out.optim.lr_decay_iters == steps


def test_init_source_gives_the_architecture_and_crops_the_context(dataset):
    cfg = build_config("baby", overrides={"dataset": str(dataset), "n_layer": 7, "block_size": 16, "dropout": 0.1})
    src = {"n_layer": 2, "n_head": 2, "n_embd": 32, "block_size": 64, "vocab_size": 80, "dropout": 0.0}
    out = _resolve(cfg, init_source=src)
    assert (out.model.n_layer, out.model.block_size, out.model.vocab_size, out.model.dropout) == (2, 16, 80, 0.1)
    with pytest.raises(UserError, match="smaller than the dataset's 100"):
        _resolve(cfg, init_source=src, data_meta={"vocab_size": 100})


def test_resume_refuses_a_conflicting_key_and_allows_cadence(dataset):
    cfg = build_config("baby", overrides={"dataset": str(dataset)})
    saved = _resolve(cfg)
    assert _resolve(build_config("baby", overrides={"dataset": str(dataset), "max_iters": 9, "log_interval": 3}),
                    resume_config=saved).train.max_iters == 9
    with pytest.raises(UserError, match=r"^--gelu 'exact' differs from 'tanh' in the run's config.json") as e:
        _resolve(build_config("baby", overrides={"dataset": str(dataset), "gelu": "exact"}), resume_config=saved)
    assert "\n" not in str(e.value)
    with pytest.raises(UserError, match="--seed"):
        _resolve(build_config("baby", overrides={"dataset": str(dataset), "seed": 3}), resume_config=saved)


def test_bf16_less_gpu_gets_fp16(monkeypatch, dataset):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    cfg = build_config("baby", overrides={"dataset": str(dataset), "dtype": "auto", "compile": "auto"})
    out = _resolve(cfg, device=torch.device("cuda", 0))
    assert (out.system.dtype, out.system.compile) == ("float16", "default")
