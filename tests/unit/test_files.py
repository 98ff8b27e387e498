"""gptlab.files: atomic writes, one-line read errors, folder locks."""

import errno
import json
import os
import socket
import subprocess
import sys

import pytest

from gptlab import files
from gptlab.errors import UserError


def test_atomic_write_json_roundtrip_and_no_temp_left(tmp_path):
    p = tmp_path / "a.json"
    files.atomic_write_json(p, {"x": [1, 2], "é": "ü"})
    assert files.read_json(p, "test file") == {"x": [1, 2], "é": "ü"}
    assert sorted(os.listdir(tmp_path)) == ["a.json"]


def test_disk_full_leaves_target_unchanged(tmp_path, monkeypatch):
    p = tmp_path / "meta.json"
    p.write_text("old\n")

    class Full:
        def __init__(self, path):
            self.f = open(path, "wb")

        def __enter__(self):
            return self

        def __exit__(self, *a):
            self.f.close()

        def write(self, b):
            self.f.write(b[:3])
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files, "_open_for_write", Full)
    with pytest.raises(UserError) as e:
        files.atomic_write_text(p, "new content\n")
    msg = str(e.value)
    assert "disk full" in msg and str(p) in msg and "\n" not in msg
    assert p.read_text() == "old\n"
    assert sorted(os.listdir(tmp_path)) == ["meta.json"]


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root ignores permissions")
def test_read_only_folder_is_one_line(tmp_path):
    d = tmp_path / "ro"
    d.mkdir()
    d.chmod(0o500)
    try:
        with pytest.raises(UserError) as e:
            files.atomic_write_text(d / "x.txt", "hi")
        assert "cannot write" in str(e.value) and "\n" not in str(e.value)
        assert os.listdir(d) == []
    finally:
        d.chmod(0o700)


def test_read_json_missing_and_damaged(tmp_path):
    with pytest.raises(UserError, match="meta file .* is missing"):
        files.read_json(tmp_path / "nope.json", "meta file")
    bad = tmp_path / "bad.json"
    bad.write_text('{"a": 1,\n')
    with pytest.raises(UserError, match=r"not valid JSON \(line 2"):
        files.read_json(bad, "meta file")
    bad.write_bytes(b"\xff\xfe{}")
    with pytest.raises(UserError, match="not UTF-8"):
        files.read_json(bad, "meta file")


def test_read_toml(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text("a = 1\n[b]\nc = 'x'\n")
    assert files.read_toml(p, "config") == {"a": 1, "b": {"c": "x"}}
    p.write_text("a = = 1\n")
    with pytest.raises(UserError, match="not valid TOML"):
        files.read_toml(p, "config")


def test_sha256_file(tmp_path):
    import hashlib
    p = tmp_path / "b"
    p.write_bytes(b"abc" * 1000)
    assert files.sha256_file(p) == hashlib.sha256(b"abc" * 1000).hexdigest()


def _write_lock(folder, pid, host=None):
    folder.mkdir(exist_ok=True)
    (folder / files.LOCK_FILE).write_text(json.dumps(
        {"pid": pid, "host": host or socket.gethostname(), "time": "2026-01-01T00:00:00Z", "token": "t"}))


def test_lock_held_by_live_pid_is_refused(tmp_path):
    d = tmp_path / "ds"
    _write_lock(d, os.getppid())  # our parent is alive
    before = (d / files.LOCK_FILE).read_text()
    with pytest.raises(UserError) as e:
        with files.folder_lock(d, "dataset"):
            pytest.fail("lock granted to a second holder")
    msg = str(e.value)
    assert f"pid {os.getppid()}" in msg and socket.gethostname() in msg and files.LOCK_FILE in msg
    assert "\n" not in msg
    assert (d / files.LOCK_FILE).read_text() == before


def test_second_holder_in_same_process_refused_then_released(tmp_path):
    d = tmp_path / "run"
    with files.folder_lock(d, "run folder"):
        assert (d / files.LOCK_FILE).is_file()
        with pytest.raises(UserError, match="in use by pid"):
            with files.folder_lock(d, "run folder"):
                pass
        assert (d / files.LOCK_FILE).is_file()  # the refused attempt did not remove ours
    assert not d.exists()  # created by the lock, left empty: removed again
    d.mkdir()
    with files.folder_lock(d):
        (d / "x").write_text("1")
    assert os.listdir(d) == ["x"]


def test_dead_pid_lock_is_taken_over(tmp_path, capsys):
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    d = tmp_path / "ds"
    _write_lock(d, p.pid)
    with files.folder_lock(d, "dataset"):
        holder = json.loads((d / files.LOCK_FILE).read_text())
        assert holder["pid"] == os.getpid()
    assert not (d / files.LOCK_FILE).exists()
    assert "stale lock" in capsys.readouterr().out


def test_lock_from_other_host_is_not_stale(tmp_path):
    d = tmp_path / "ds"
    _write_lock(d, 999999999, host="some-other-host")
    with pytest.raises(UserError, match="some-other-host"):
        with files.folder_lock(d):
            pass
