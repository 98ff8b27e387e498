"""Data safety (issue 12): prepare never replaces what it did not write, verified bins, safe meta.json."""

import errno
import hashlib
import json
import os

import numpy as np
import pytest

from gptlab import cli, files
from gptlab.data import prepare as P
from gptlab.data import tokenizers as TK
from gptlab.data import tokens as T
from gptlab.errors import UserError

_real_sha = files.sha256_file
TEXT = "To be, or not to be, that is the question.\n" * 40


def tree(root) -> dict:
    """sha256 of every file under root, by relative path."""
    out = {}
    for dirpath, _, names in os.walk(root):
        for n in names:
            p = os.path.join(dirpath, n)
            out[os.path.relpath(p, root)] = hashlib.sha256(open(p, "rb").read()).hexdigest()
    return out


def refused(argv, capsys) -> str:
    """Run `gptlab prepare ARGV`; assert exit 2 with one line on stderr; return that line."""
    rc = cli.main(["prepare", *argv])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and err.startswith("error: "), err
    return err


@pytest.fixture
def src(tmp_path):
    p = tmp_path / "in.txt"
    p.write_text(TEXT)
    return p


def char_prepare(src, out, *extra):
    return cli.main(["prepare", "text", "--input", str(src), "--tokenizer", "char", "--out", str(out), "--no_progress", *extra])


def test_out_folder_of_documents_is_refused(tmp_path, src, capsys):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text("precious")
    before = tree(tmp_path)
    for extra in ([], ["--overwrite"]):
        assert "not a gptlab dataset" in refused(["text", "--input", str(src), "--tokenizer", "char", "--out", str(docs), *extra], capsys)
    assert tree(tmp_path) == before


def test_out_cwd_run_folder_file_and_under_file_are_refused(tmp_path, src, capsys, monkeypatch):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.json").write_text("{}")
    (tmp_path / "afile").write_text("x")
    assert char_prepare(src, tmp_path / "ds") == 0
    (tmp_path / "link").symlink_to(tmp_path / "ds")
    monkeypatch.chdir(tmp_path)
    before = tree(tmp_path)
    for out in (".", str(tmp_path), "run", "afile", "afile/sub", "link"):
        refused(["text", "--input", str(src), "--tokenizer", "char", "--out", out, "--overwrite"], capsys)
    assert tree(tmp_path) == before


def test_dataset_replaced_only_with_overwrite_and_only_when_complete(tmp_path, src, capsys):
    out = tmp_path / "d"
    assert char_prepare(src, out) == 0
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"ok \xff broken")
    before = tree(tmp_path)
    assert "--overwrite" in refused(["text", "--input", str(src), "--tokenizer", "char", "--out", str(out)], capsys)
    assert "not UTF-8" in refused(["text", "--input", str(bad), "--tokenizer", "char", "--out", str(out), "--overwrite"], capsys)
    assert tree(tmp_path) == before  # nothing left behind, old dataset intact
    src.write_text("xyz" * 50)
    assert char_prepare(src, out, "--overwrite") == 0
    assert T.read_meta(out)["vocab_size"] == 3 and sorted(os.listdir(tmp_path)) == ["bad.txt", "d", "in.txt"]


def test_empty_folder_is_used(tmp_path, src):
    (tmp_path / "d").mkdir()
    assert char_prepare(src, tmp_path / "d") == 0
    assert T.read_meta(tmp_path / "d")["splits"]["train"]["tokens"] == round(len(TEXT) * 0.9)


def test_hf_overwrite_validates_everything_before_removing_old(tmp_path, capsys):
    rows = [json.dumps({"text": f"document {i} " * 3}) for i in range(6000)]
    good = tmp_path / "c.jsonl"
    good.write_text("\n".join(rows) + "\n")
    out = tmp_path / "o"
    base = ["hf", "--dataset", str(good), "--tokenizer", "char", "--val_fraction", "0", "--num_proc", "1",
            "--out", str(out), "--no_progress"]
    assert cli.main(["prepare", *base]) == 0
    rows[5000] = "{not json"
    good.write_text("\n".join(rows) + "\n")
    before = tree(tmp_path)
    assert "not JSON" in refused([*base, "--overwrite"], capsys)
    assert tree(tmp_path) == before
    T.verify_bins(out, T.read_meta(out))


def test_second_concurrent_prepare_is_refused(tmp_path, src, capsys):
    out = tmp_path / "d"
    with files.folder_lock(P.work_dir(out), "prepare output"):
        before = tree(tmp_path)
        msg = refused(["text", "--input", str(src), "--tokenizer", "char", "--out", str(out)], capsys)
        assert f"pid {os.getpid()}" in msg and files.LOCK_FILE in msg
        assert tree(tmp_path) == before
    assert not out.exists() and not P.work_dir(out).exists()


def test_disk_full_keeps_old_dataset(tmp_path, src, capsys, monkeypatch):
    out = tmp_path / "d"
    assert char_prepare(src, out) == 0
    before = tree(out)

    def full(self, ids, lens=None):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(T.SplitWriter, "append", full)
    msg = refused(["text", "--input", str(src), "--tokenizer", "char", "--out", str(out), "--overwrite"], capsys)
    assert "disk full" in msg and "--resume" in msg
    assert tree(out) == before
    monkeypatch.undo()  # space freed: the hint's command finishes the replacement
    src.write_text("xyz" * 50)
    assert "different options" in refused(["text", "--input", str(src), "--tokenizer", "char", "--out", str(out),
                                           "--resume"], capsys)  # the input changed since
    src.write_text(TEXT)
    assert char_prepare(src, out, "--resume") == 0 and not P.work_dir(out).exists()
    T.verify_bins(out, T.read_meta(out))


def test_verify_bins_catches_same_size_replacement_and_caches(tmp_path, src, monkeypatch):
    monkeypatch.setenv("GPTLAB_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "d"
    assert char_prepare(src, out) == 0
    meta = T.read_meta(out)
    before = tree(out)
    T.verify_bins(out, meta)
    assert T.verified_cache(out).is_file() and tree(out) == before  # nothing written into the dataset
    monkeypatch.setattr(files, "sha256_file", lambda p: pytest.fail("re-hashed an unchanged bin"))
    T.verify_bins(out, meta)  # cached by (size, mtime, inode)
    monkeypatch.setattr(files, "sha256_file", _real_sha)
    size = (out / "train.bin").stat().st_size
    (out / "train.bin").write_bytes(b"\0" * size)
    with pytest.raises(UserError) as e:
        T.verify_bins(out, meta)
    msg = str(e.value)
    assert "train.bin" in msg and "--overwrite" in msg and "\n" not in msg


@pytest.mark.parametrize("model_file", ["config.json", "../x.model", "/etc/passwd", "sub/t.model", "meta.json"])
def test_meta_cannot_name_files_outside_or_layout_names(tmp_path, model_file):
    (tmp_path / "train.bin").write_bytes(np.arange(10, dtype="<u2").tobytes())
    T.write_meta(tmp_path, {"tokenizer": {"kind": "sentencepiece", "model_file": model_file}, "vocab_size": 300,
                            "dtype": "uint16", "eot_id": None, "splits": {"train": {"tokens": 10}}})
    with pytest.raises(UserError, match="model_file"):
        T.read_meta(tmp_path)
    with pytest.raises(UserError, match="model_file"):
        TK.tokenizer_from_meta(json.loads((tmp_path / "meta.json").read_text()), tmp_path)


def test_meta_split_names_and_truncated_char_table(tmp_path, src):
    out = tmp_path / "d"
    assert char_prepare(src, out) == 0
    meta = json.loads((out / "meta.json").read_text())
    meta["tokenizer"]["chars"] = meta["tokenizer"]["chars"][:-3]
    (out / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(UserError, match=r"character table .* \(truncated"):
        T.read_meta(out)
    meta["tokenizer"]["chars"] = "abc"
    (out / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(UserError, match="character table"):
        T.read_meta(out)
    meta["tokenizer"] = {"kind": "gpt2"}
    meta["splits"] = {"../../x": {"tokens": 1}}
    (out / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(UserError, match="split name"):
        T.read_meta(out)


def test_utf16_without_bom_refused_with_bom_decoded(tmp_path, capsys):
    text = "héllo wörld, plain text\n" * 30
    nobom = tmp_path / "u16.txt"
    nobom.write_bytes(text.encode("utf-16-le"))
    msg = refused(["text", "--input", str(nobom), "--tokenizer", "char", "--out", str(tmp_path / "d")], capsys)
    assert "UTF-16" in msg and "UTF-8" in msg
    for enc in ("utf-16", "utf-32", "utf-8-sig"):
        f = tmp_path / f"{enc}.txt"
        f.write_bytes(text.encode(enc))  # with a byte-order mark
        out = P.prepare("text", input=f, tokenizer="char", out=tmp_path / enc, progress=False)
        tok = TK.tokenizer_from_meta(T.read_meta(out), out)
        assert tok.decode(np.concatenate([T.load_split(out, "train"), T.load_split(out, "val")])) == text


def test_fingerprints_and_progress_lines(tmp_path, src, capsys):
    out = P.prepare("text", input=src, tokenizer="char", out=tmp_path / "d")
    assert "100%" in capsys.readouterr().out  # not a terminal: progress lines
    fp = T.read_meta(out)["tokenizer"]["fingerprint"]
    assert fp == hashlib.sha256("".join(sorted(set(TEXT))).encode()).hexdigest()
    assert TK.GPT2Tokenizer.to_meta(None)["fingerprint"] == TK.R50K_TIKTOKEN_SHA256


def test_gpt2_constructor_never_fetches(monkeypatch, tmp_path):
    monkeypatch.delenv("GPTLAB_GPT2_VOCAB", raising=False)
    monkeypatch.setenv("GPTLAB_CACHE_DIR", str(tmp_path / "c"))
    monkeypatch.setattr(TK, "_ranks_from_tiktoken_cache", lambda: None)
    monkeypatch.setattr(TK, "_ranks_from_installed_packages", lambda: None)
    monkeypatch.setattr(TK, "fetch_gpt2_vocab_from_registry", lambda *a, **k: pytest.fail("fetched in a constructor"))
    TK.gpt2_encoding.cache_clear()
    try:
        with pytest.raises(UserError, match="pip install"):
            TK.GPT2Tokenizer()
    finally:
        TK.gpt2_encoding.cache_clear()
