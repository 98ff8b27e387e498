"""`gptlab prepare hf`: offline sources, exact tokens, resume, refusal, eval on a prepared split.

Needs pyarrow for the parquet tests and `datasets` for the save_to_disk one
(both in the `datasets` extra); tests skip cleanly without them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gptlab.data import hf_prepare as H
from gptlab.data import tokens as T
from gptlab.data.tokenizers import gpt2_encoding
from gptlab.errors import UserError

ROOT = Path(__file__).resolve().parents[2]


def _docs(n=400, seed=0):
    rng = np.random.default_rng(seed)
    words = ["the", "cat", "sat", "on", "mat", "Ünïcode", "naïve", "42", "\n", "  ", "<|endoftext|>", "don't", "—"]
    docs = [" ".join(rng.choice(words, size=int(rng.integers(1, 60)))) for _ in range(n)]
    docs[3] = ""  # empty documents are skipped
    return docs


def _expected(docs):
    enc = gpt2_encoding()
    ids, starts = [], []
    for d in docs:
        if d:
            starts.append(len(ids))
            ids += enc.encode_ordinary(d) + [enc.eot_token]
    return np.asarray(ids, dtype=np.uint16), np.asarray(starts, dtype=np.uint64)


def _write_jsonl(path, docs):
    with open(path, "w", encoding="utf-8") as f:
        for d in docs:
            f.write(json.dumps({"text": d, "id": 1}) + "\n")


def _write_parquet(path, docs, field="text"):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(pa.table({field: docs}), path, row_group_size=50)


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_jsonl_equals_direct_tiktoken(tmp_path):
    docs = _docs()
    _write_jsonl(tmp_path / "c.jsonl", docs)
    out = H.prepare_hf(str(tmp_path / "c.jsonl"), val_fraction=0.0, num_proc=2, out=tmp_path / "o",
                       batch_docs=37, progress=False)
    exp, starts = _expected(docs)
    meta = T.read_meta(out)
    assert list(meta["splits"]) == ["train"]
    T.verify_bins(out, meta)
    np.testing.assert_array_equal(T.load_split(out, "train", meta), exp)
    np.testing.assert_array_equal(T.doc_offsets(out, "train"), starts)
    assert meta["splits"]["train"]["documents"] == len(starts) == len(docs) - 1
    assert meta["eot_id"] == 50256 and meta["source"]["kind"] == "jsonl"
    assert not (out / H.PROGRESS).exists() and not list(out.glob("*.partial")) and not H.work_dir(out).exists()


def test_parquet_splits_and_val_carve(tmp_path):
    docs = _docs(600, seed=1)
    d = tmp_path / "ds" / "data"
    d.mkdir(parents=True)
    _write_parquet(d / "train-00000-of-00002.parquet", docs[:300])
    _write_parquet(d / "train-00001-of-00002.parquet", docs[300:500])
    _write_parquet(d / "test-00000-of-00001.parquet", docs[500:])
    out = H.prepare_hf(str(tmp_path / "ds"), val_fraction=0.1, seed=5, num_proc=1, out=tmp_path / "o", progress=False)
    meta = T.read_meta(out)
    assert sorted(meta["splits"]) == ["test", "train", "val"]
    np.testing.assert_array_equal(T.load_split(out, "test"), _expected(docs[500:])[0])
    is_val = H.row_uniform(5, 0, 500) < 0.1
    assert 20 < is_val.sum() < 90
    tr = [x for x, v in zip(docs[:500], is_val) if not v]
    va = [x for x, v in zip(docs[:500], is_val) if v]
    np.testing.assert_array_equal(T.load_split(out, "train"), _expected(tr)[0])
    np.testing.assert_array_equal(T.load_split(out, "val"), _expected(va)[0])
    # --split picks one split, written under its own name
    out2 = H.prepare_hf(str(tmp_path / "ds"), split="test", num_proc=1, out=tmp_path / "o2", progress=False)
    assert list(T.read_meta(out2)["splits"]) == ["test"]
    assert (out2 / "test.bin").read_bytes() == (out / "test.bin").read_bytes()


def test_save_to_disk_offline_and_recipe_split(tmp_path):
    datasets = pytest.importorskip("datasets")
    docs = _docs(300, seed=2)
    dd = datasets.DatasetDict({
        "train": datasets.Dataset.from_dict({"text": docs[:250], "n": list(range(250))}),
        "validation": datasets.Dataset.from_dict({"text": docs[250:], "n": list(range(50))}),
    })
    dd.save_to_disk(str(tmp_path / "saved"))
    out = H.prepare_hf(str(tmp_path / "saved"), val_fraction=0.0005, num_proc=2, out=tmp_path / "o", progress=False)
    meta = T.read_meta(out)
    assert sorted(meta["splits"]) == ["train", "val"]  # validation -> val; nothing carved when it exists
    np.testing.assert_array_equal(T.load_split(out, "val"), _expected(docs[250:])[0])
    np.testing.assert_array_equal(T.load_split(out, "train"), _expected(docs[:250])[0])
    # A single train split: the recipe's train_test_split(seed) picks val, train in shuffled order.
    dd["train"].save_to_disk(str(tmp_path / "one"))
    out = H.prepare_hf(str(tmp_path / "one"), val_fraction=0.1, seed=2357, num_proc=2, out=tmp_path / "o3", progress=False)
    tt = dd["train"].train_test_split(test_size=0.1, seed=2357, shuffle=True)
    np.testing.assert_array_equal(T.load_split(out, "train"), _expected(tt["train"]["text"])[0])
    np.testing.assert_array_equal(T.load_split(out, "val"), _expected(tt["test"]["text"])[0])


class _Boom(Exception):
    pass


@pytest.mark.parametrize("num_proc", [1, 2])
def test_resume_equals_uninterrupted(tmp_path, num_proc):
    docs = _docs(500, seed=3)
    src = tmp_path / "c.jsonl"
    _write_jsonl(src, docs)
    kw = dict(val_fraction=0.05, num_proc=num_proc, batch_docs=20, progress=False)
    ref = H.prepare_hf(str(src), out=tmp_path / "ref", **kw)

    def boom_after(n):
        def hook(i):
            if i == n:
                raise _Boom
        return hook

    out = tmp_path / "o"
    # sync_every_s=0: a checkpoint after every batch, so the kill lands between checkpoints' data
    with pytest.raises(_Boom):
        H.prepare_hf(str(src), out=out, sync_every_s=0, _after_batch=boom_after(7), **kw)
    # Simulate bytes written after the last checkpoint (a kill mid-write): resume must drop them.
    with open(H.work_dir(out) / "train.bin.partial", "ab") as f:
        f.write(b"\x01\x02\x03")
    assert (H.work_dir(out) / H.PROGRESS).exists() and not out.exists()
    with pytest.raises(UserError, match="--resume"):
        H.prepare_hf(str(src), out=out, **kw)
    with pytest.raises(UserError, match="different options"):
        H.prepare_hf(str(src), out=out, resume=True, **{**kw, "val_fraction": 0.2})
    with pytest.raises(_Boom):  # a second interruption, then a clean finish
        H.prepare_hf(str(src), out=out, resume=True, sync_every_s=1e9, _after_batch=boom_after(5), **kw)
    H.prepare_hf(str(src), out=out, resume=True, **kw)
    for name in ("train.bin", "val.bin", "train.docs.npy", "val.docs.npy"):
        assert (out / name).read_bytes() == (ref / name).read_bytes(), name
    assert T.read_meta(out)["splits"] == T.read_meta(ref)["splits"]
    # finished: another --resume is a no-op, a plain re-run refuses, --overwrite redoes
    H.prepare_hf(str(src), out=out, resume=True, **kw)
    with pytest.raises(UserError, match="--overwrite"):
        H.prepare_hf(str(src), out=out, **kw)
    H.prepare_hf(str(src), out=out, overwrite=True, **kw)
    assert (out / "train.bin").read_bytes() == (ref / "train.bin").read_bytes()


def test_resume_after_killed_subprocess(tmp_path):
    docs = _docs(3000, seed=4)
    src = tmp_path / "c.jsonl"
    _write_jsonl(src, docs)
    code = (
        "import os, sys; from gptlab.data import hf_prepare as H\n"
        "def hook(i):\n"
        "    if i == 9: os.kill(os.getpid(), 9)\n"  # SIGKILL: no cleanup of any kind runs
        f"H.prepare_hf({str(src)!r}, out={str(tmp_path / 'o')!r}, val_fraction=0.01, num_proc=2, batch_docs=50,"
        " progress=False, sync_every_s=0, _after_batch=hook)\n"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == -9, r.stderr[-2000:]
    prog = json.loads((H.work_dir(tmp_path / "o") / H.PROGRESS).read_text())
    assert 0 < prog["rows_done"] < len(docs)
    r = subprocess.run([sys.executable, "-m", "gptlab", "prepare", "hf", "--dataset", str(src), "--out", str(tmp_path / "o"),
                        "--val_fraction", "0.01", "--batch_docs", "50", "--no_progress"],
                       env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "--resume" in r.stderr and r.stderr.count("\n") == 1, r.stderr
    r = subprocess.run([sys.executable, "-m", "gptlab", "prepare", "hf", "--dataset", str(src), "--out", str(tmp_path / "o"),
                        "--val_fraction", "0.01", "--batch_docs", "50", "--no_progress", "--resume", "--num_proc", "1"],
                       env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    ref = H.prepare_hf(str(src), out=tmp_path / "ref", val_fraction=0.01, num_proc=1, batch_docs=50, progress=False)
    for name in ("train.bin", "val.bin", "train.docs.npy", "val.docs.npy"):
        assert (tmp_path / "o" / name).read_bytes() == (ref / name).read_bytes(), name


def test_char_and_text_files(tmp_path):
    d = tmp_path / "txt"
    d.mkdir()
    (d / "a.txt").write_text("hello world\n")
    (d / "b.txt").write_text("")
    (d / "c.txt").write_text("wörld hello")
    out = H.prepare_hf(str(d), tokenizer="char", val_fraction=0.0, num_proc=1, out=tmp_path / "o", progress=False)
    meta = T.read_meta(out)
    assert meta["eot_id"] is None or meta["splits"]["train"]["documents"] == 2
    assert meta["splits"]["train"]["documents"] == 2
    assert meta["splits"]["train"]["tokens"] == len("hello world\n") + len("wörld hello") + (2 if meta["eot_id"] is not None else 0)


def test_user_errors(tmp_path, monkeypatch):
    _write_jsonl(tmp_path / "c.jsonl", ["a", "b"])
    with pytest.raises(UserError, match="text_field"):
        H.prepare_hf(str(tmp_path / "c.jsonl"), text_field="body", num_proc=1, out=tmp_path / "o", progress=False)
    (tmp_path / "bad.jsonl").write_text('{"text": "a"}\nnot json\n')
    with pytest.raises(UserError, match="not JSON"):
        H.prepare_hf(str(tmp_path / "bad.jsonl"), num_proc=1, out=tmp_path / "o2", progress=False)
    with pytest.raises(UserError, match="no split"):
        H.prepare_hf(str(tmp_path / "c.jsonl"), split="test", num_proc=1, out=tmp_path / "o3", progress=False)
    # No datasets library: a hub name says how to install it.
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(UserError, match=r"pip install 'gptlab\[datasets\]'"):
        H.prepare_hf("someone/some-dataset", num_proc=1, out=tmp_path / "o4", progress=False)


def test_wikitext_style_parquet_zero_shot_eval(tmp_path):
    """A local WikiText-style test split, prepared and evaluated with `gptlab eval`."""
    pytest.importorskip("pyarrow")
    articles = [" = Article %d = \n\n The %d th article is about cats and mats . \n" % (i, i) * 3 for i in range(40)]
    d = tmp_path / "wikitext-local"
    d.mkdir()
    _write_parquet(d / "test-00000-of-00001.parquet", articles)
    _write_parquet(d / "train-00000-of-00001.parquet", articles[:20])
    data = tmp_path / "data"
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_DATASETS_OFFLINE="1")
    # The CLI's own entry point (`gptlab prepare hf ...` calls prepare.main), in-process to save a start-up.
    from gptlab.data.prepare import main as prepare_main

    assert prepare_main(["hf", "--dataset", str(d), "--split", "test", "--out", str(data / "wt"), "--no_progress"]) == 0
    assert list(T.read_meta(data / "wt")["splits"]) == ["test"]
    # A tiny run folder (config.json + checkpoint) built in-process: what `gptlab train`
    # writes, without paying for training on a shared 2-core CI machine.
    torch = pytest.importorskip("torch")
    from gptlab import checkpoint as ck
    from gptlab.config_files import build_config
    from gptlab.model import GPT

    cfg = build_config("baby", overrides=dict(n_layer=1, n_embd=32, n_head=2, block_size=32, vocab_size=50304))
    cfg.data.dataset = str(data / "wt")
    torch.manual_seed(0)
    model = GPT(cfg.model).init_weights()
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(cfg.to_json() + "\n")
    ckpt = ck.save_checkpoint(run, {"model": model.state_dict()}, step=0)
    r = subprocess.run([sys.executable, "-m", "gptlab", "eval", "--checkpoint_file", str(ckpt),
                        "--config_file", str(run / "config.json"), "--eval_data_split", "test", "--last_n", "16",
                        "--dataset", str(data / "wt")], env=env, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr[-3000:]
    m = json.loads(r.stdout.strip().splitlines()[-1])
    assert m["split"] == "test" and np.isfinite(m["ppl"]) and m["ppl"] > 1, m
