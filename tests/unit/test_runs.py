import pytest

from gptlab.config_files import build_config
from gptlab.errors import UserError
from gptlab.resolve import run_dir, run_name
from gptlab.runs import prepare_run_dir

# The benchmark's own folder name for its 6h small run (configs.add_exp_name): micro = accumulation steps.
SMALL_6H = ("GPT_books16384_bsz128_micro4_sl512_coslr0.0006to6e-06_h768_ff3072_nH12_dH64_nl12_"
            "clip0.0_decay18k_workers1_defaultCompile_fp16_seed0")


def test_name_of_the_languini_small_recipe():
    cfg = build_config("small", overrides={"compile": "default"})
    assert run_name(cfg, 1) == SMALL_6H


def test_name_of_the_benchmarks_medium_48h_run():
    cfg = build_config("medium", overrides={"compute_class": "48h", "compile": "default", "decay_steps": 21908})
    assert run_name(cfg, 1) == ("GPT_books16384_bsz256_micro32_sl512_coslr0.0006to6e-06_h1024_ff4096_nH16_dH64_"
                                "nl24_clip0.0_decay21k_workers1_defaultCompile_fp16_seed0")


def test_name_tracks_workers_accumulation_comment_and_decay():
    cfg = build_config("medium", overrides={"train_batch_size": 256, "gradient_accumulation_steps": 8,
                                            "decay_steps": 43817, "comment": "my idea/v2", "compile": "None",
                                            "precision": "bfloat16", "seed": 3})
    name = run_name(cfg, 4)
    assert "_bsz256_micro8_" in name  # 8 accumulation steps (each of 4 workers: 256 / 4 / 8 = 8 rows)
    assert "_h1024_ff4096_nH16_dH64_nl24_" in name
    assert "_decay43k_workers4_bf16_seed3_my-idea-v2" in name  # compile off: no compile field, as the benchmark
    assert name.endswith("_my-idea-v2") and "/" not in name
    one = build_config("medium", overrides={"train_batch_size": 256, "gradient_accumulation_steps": 1})
    assert "_bsz256_sl512_" in run_name(one, 1)  # no accumulation: no micro field


def test_small_decay_counts_in_thousands_and_constant_lr():
    cfg = build_config("mini", overrides={"decay_steps": 40, "decay_lr": False, "dataset": "/tmp/x/open_books/"})
    name = run_name(cfg, 1)
    assert name.startswith("GPT_openbooks_")
    assert "_constlr0.0006_" in name and "_decay0k_" in name


def test_run_dir_layout(tmp_path):
    cfg = build_config("small", overrides={"compute_class": "6h", "log_root": str(tmp_path), "compile": "default"})
    assert run_dir(cfg, 1) == tmp_path / "6h" / "small" / SMALL_6H
    cfg.train.compute_class = ""
    assert run_dir(cfg, 1) == tmp_path / "free" / "small" / SMALL_6H
    cfg.log.name = "short"
    assert run_dir(cfg, 1) == tmp_path / "free" / "small" / "short"
    cfg.log.out_dir = str(tmp_path / "elsewhere")
    assert run_dir(cfg, 1) == tmp_path / "elsewhere"


def test_new_folder_is_created_by_the_lock(tmp_path):
    from gptlab.runs import run_lock

    p = prepare_run_dir(tmp_path / "a" / "b")
    assert not p.exists()  # prepare_run_dir only checks; run_lock creates
    with run_lock(p):
        assert p.is_dir()
    assert not p.exists()  # left empty: removed again
    p.mkdir(parents=True)
    assert prepare_run_dir(p) == p  # empty folder: nothing to lose


def _filled(tmp_path):
    p = tmp_path / "run"
    (p / "checkpoints").mkdir(parents=True)
    (p / "metrics.jsonl").write_text('{"kind": "train", "step": 1}\n')
    return p


def test_existing_folder_refused_without_flags(tmp_path):
    p = _filled(tmp_path)
    with pytest.raises(UserError, match="--resume.*--overwrite"):
        prepare_run_dir(p)
    assert (p / "metrics.jsonl").read_text() == '{"kind": "train", "step": 1}\n'


def test_resume_keeps_contents(tmp_path):
    p = _filled(tmp_path)
    (p / "checkpoints" / "ckpt_00000001.pt").write_bytes(b"x")
    assert prepare_run_dir(p, resume=True) == p
    assert (p / "metrics.jsonl").exists()


def test_resume_of_nothing_is_an_error(tmp_path):
    with pytest.raises(UserError, match="nothing to continue"):
        prepare_run_dir(tmp_path / "missing", resume=True)


def test_overwrite_moves_aside_never_deletes(tmp_path):
    p = _filled(tmp_path)
    prepare_run_dir(p, overwrite=True)
    assert not p.exists()
    aside = [q for q in tmp_path.iterdir() if q.name.startswith("run.old-")]
    assert len(aside) == 1
    assert (aside[0] / "metrics.jsonl").read_text() == '{"kind": "train", "step": 1}\n'
    # a second overwrite in the same second must not clash with the first
    p.mkdir()
    (p / "metrics.jsonl").write_text("second")
    prepare_run_dir(p, overwrite=True)
    aside = sorted(q.name for q in tmp_path.iterdir() if q.name.startswith("run.old-"))
    assert len(aside) == 2


def test_contradictions_and_files(tmp_path):
    with pytest.raises(UserError):
        prepare_run_dir(tmp_path / "r", resume=True, overwrite=True)
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(UserError, match="is a file"):
        prepare_run_dir(f, overwrite=True)
    assert f.read_text() == "x"
