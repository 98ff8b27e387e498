"""Crash-safe checkpoints: atomic writes, checksums, fallback, full disk, safe loading.

All in-process (no training subprocess): the file-level guarantees do not need a model
bigger than a couple of tensors, except the one test that fills the disk mid-training.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch
from faults import _FullDisk  # tests/ is on sys.path under pytest

from gptlab import checkpoint as ck
from gptlab import files
from gptlab.errors import UserError


def _state(value: float) -> dict:
    return {"model": {"w": torch.full((64, 64), value)}, "optimizer": {"state": {}, "param_groups": []},
            "config": {"model": {}}}


def _files(d: Path) -> dict[str, bytes]:
    """Every file under d with its bytes (the 'did anything change' snapshot)."""
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def test_save_writes_checksum_pointers_and_keeps_last_k(tmp_path):
    for step in (1, 2, 3, 4):
        ck.save_checkpoint(tmp_path, _state(step), step, keep_last=2, is_best=(step == 2))
    d = ck.checkpoint_dir(tmp_path)
    assert [p.name for p in ck.list_checkpoints(tmp_path)] == ["ckpt_00000004.pt", "ckpt_00000003.pt"]
    for p in ck.list_checkpoints(tmp_path):
        assert ck.verify(p) is None
        assert (p.parent / (p.name + ".sha256")).read_text().strip() == ck.sha256_file(p)
    assert (d / "latest").read_text().strip() == "ckpt_00000004.pt"
    assert ck.load_checkpoint(d / "model.pt")["step"] == 4
    assert ck.load_checkpoint(d / "best.pt")["step"] == 2  # kept although its numbered file was pruned
    assert not [p for p in d.iterdir() if ".tmp" in p.name]


def test_write_goes_to_temp_file_fsynced_then_renamed(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}") if os.path.exists(f"/proc/self/fd/{fd}") else fd))
        return real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", str(src), str(dst)))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    path = ck.save_checkpoint(tmp_path, _state(1.0), 7)
    i = next(k for k, e in enumerate(events) if e[0] == "replace" and e[2] == str(path))
    src = events[i][1]
    assert Path(src).name.startswith(".ckpt_00000007.pt.tmp")  # a temporary name in the same folder
    assert ("fsync", src) in events[:i]  # the bytes reached the disk before the rename made them visible


def test_damaged_newest_is_reported_and_resume_falls_back(tmp_path):
    for step in (10, 20, 30):
        ck.save_checkpoint(tmp_path, _state(step), step, keep_last=3)
    d = ck.checkpoint_dir(tmp_path)
    newest, middle = d / "ckpt_00000030.pt", d / "ckpt_00000020.pt"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])  # truncated
    raw = bytearray(middle.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # one flipped byte
    middle.write_bytes(bytes(raw))
    assert "checksum mismatch" in ck.verify(newest)
    with pytest.raises(UserError, match="damaged: checksum mismatch"):
        ck.load_checkpoint(newest)
    warnings = []
    state, path = ck.load_latest_valid(tmp_path, warn=warnings.append)
    assert path.name == "ckpt_00000010.pt" and state["step"] == 10
    assert len(warnings) == 2 and all("skipping checkpoint" in w and "checksum" in w for w in warnings)


def test_missing_or_garbage_sidecar_is_not_trusted(tmp_path):
    ck.save_checkpoint(tmp_path, _state(1.0), 1)
    p = ck.save_checkpoint(tmp_path, _state(2.0), 2)
    side = p.with_name(p.name + ".sha256")
    side.write_bytes(os.urandom(100))  # not even text
    assert ck.verify(p) == "its .sha256 file is damaged"
    side.unlink()
    assert "no checksum" in ck.verify(p)
    assert ck.load_latest_valid(tmp_path, warn=lambda m: None)[1].name == "ckpt_00000001.pt"


def test_nothing_valid_left(tmp_path):
    p = ck.save_checkpoint(tmp_path, _state(1.0), 1)
    p.write_bytes(b"")
    assert ck.load_latest_valid(tmp_path, warn=lambda m: None) is None


def test_resaving_a_step_after_fallback_sets_the_abandoned_newer_one_aside(tmp_path):
    for step in (10, 20):
        ck.save_checkpoint(tmp_path, _state(step), step, keep_last=2)
    bad = ck.checkpoint_dir(tmp_path) / "ckpt_00000020.pt"
    bad.write_bytes(b"junk")
    state, path = ck.load_latest_valid(tmp_path, warn=lambda m: None)
    assert state["step"] == 10
    ck.save_checkpoint(tmp_path, _state(11), 11, keep_last=2)  # the resumed run moves on
    # Without this the damaged 20 would stay "newest" and push good checkpoints out of keep_last.
    assert [p.name for p in ck.list_checkpoints(tmp_path)] == ["ckpt_00000011.pt", "ckpt_00000010.pt"]
    assert (ck.checkpoint_dir(tmp_path) / "ckpt_00000020.pt.stale").is_file()


@pytest.mark.parametrize("fail_on", ["checkpoint", "checksum"])
def test_full_disk_during_save_keeps_previous_checkpoint(tmp_path, monkeypatch, fail_on):
    ck.save_checkpoint(tmp_path, _state(1.0), 1, is_best=True)
    before = _files(tmp_path)
    real_open = files._open_for_write

    def opener(path):
        is_side = ".sha256" in Path(path).name
        if (fail_on == "checksum") == is_side:
            return _FullDisk(path, budget=10 if is_side else 200)
        return real_open(path)

    monkeypatch.setattr(files, "_open_for_write", opener)
    with pytest.raises(UserError, match="disk full .* previous checkpoint is intact") as e:
        ck.save_checkpoint(tmp_path, _state(2.0), 2)
    assert "\n" not in str(e.value)
    assert _files(tmp_path) == before  # not one byte changed, no temporary file left over
    monkeypatch.setattr(files, "_open_for_write", real_open)
    state, path = ck.load_latest_valid(tmp_path, warn=pytest.fail)
    assert state["step"] == 1 and torch.equal(state["model"]["w"], _state(1.0)["model"]["w"])


class _Payload:
    """Unpickling this runs code: it writes a marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


@pytest.mark.parametrize("how", ["pickle", "torch.save"])
def test_malicious_pickle_is_refused_and_never_runs(tmp_path, how):
    marker = tmp_path / "PWNED"
    path = tmp_path / "evil.pt"
    payload = {"model": {"w": torch.zeros(2)}, "x": _Payload(marker)}
    with open(path, "wb") as f:
        pickle.dump(payload, f) if how == "pickle" else torch.save(payload, f)
    with pytest.raises(UserError, match="not a valid gptlab/PyTorch checkpoint"):
        ck.load_checkpoint(path)
    assert not marker.exists()
    # Dropped into a run as its newest checkpoint, with a matching checksum: skipped, never run.
    ck.save_checkpoint(tmp_path / "run", _state(1.0), 1)
    evil = ck.checkpoint_dir(tmp_path / "run") / "ckpt_00000002.pt"
    evil.write_bytes(path.read_bytes())
    evil.with_name(evil.name + ".sha256").write_text(ck.sha256_file(evil) + "\n")
    warned = []
    state, used = ck.load_latest_valid(tmp_path / "run", warn=warned.append)
    assert used.name == "ckpt_00000001.pt" and warned and not marker.exists()


def test_foreign_objects_are_not_checkpoints(tmp_path):
    p = tmp_path / "x.pt"
    torch.save({"weights": torch.zeros(1)}, p)
    with pytest.raises(UserError, match="no 'model' entry"):
        ck.load_checkpoint(p)
    torch.save({"model": {"w": [1, 2]}}, p)
    with pytest.raises(UserError, match="not a state dict of tensors"):
        ck.load_checkpoint(p)
    torch.save({"model": {"w": torch.zeros(1)}, "step": "7", "optimizer": {}, "config": {}}, p)
    with pytest.raises(UserError, match="'step' is '7'"):
        ck.check_resumable(ck.load_checkpoint(p), p)
