"""No unpickling of anything a run folder can name: the sharded (DCP) checkpoint a checkpoint
points at is read only from a dcp_<8 digits> folder inside the run's checkpoints/, whose
.metadata bytes match the hash the checkpoint recorded, and then only through an unpickler
that knows the DCP metadata classes and nothing else.

The exploit: a run's newest checkpoint edited (its .sha256 rewritten to match) so that
"sharded" names a folder whose .metadata is a pickle that would create a marker file. Every
variant must end in one line, exit 2, no marker, and an untouched file tree.
"""

from __future__ import annotations

import hashlib
import pickle

import pytest
import torch
from test_errors_cli import expect_user_error, train_argv, world  # noqa: F401 (fixture)

from gptlab import checkpoint as ck
from gptlab import distributed as dist_
from gptlab.errors import UserError


class _Payload:
    """Unpickling this runs code: it creates the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


def _edit_newest(run, **changes):
    """Rewrite the run's newest checkpoint with `changes`, and its .sha256 to match."""
    path = ck.list_checkpoints(run)[0]
    state = torch.load(path, weights_only=True)
    state.update(changes)
    torch.save(state, path)
    path.with_name(path.name + ".sha256").write_text(ck.sha256_file(path) + "\n")
    return path


def _evil_folder(parent, marker, name="dcp_00000099"):
    d = parent / name
    d.mkdir(parents=True)
    (d / ".metadata").write_bytes(pickle.dumps(_Payload(marker)))
    return d


def _sha(p):
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _variants(run, outside, marker):
    """name -> the "sharded" entry of an edited checkpoint."""
    inside = _evil_folder(run / "checkpoints", marker)
    far = _evil_folder(outside, marker)
    return {
        "absolute path (legacy string)": str(far),
        "relative name (legacy string)": "dcp_00000099",
        "absolute path in name": {"name": str(far), "metadata_sha256": _sha(far / ".metadata")},
        "parent traversal": {"name": "../../" + far.parent.name + "/dcp_00000099",
                             "metadata_sha256": _sha(far / ".metadata")},
        "inside, wrong hash": {"name": inside.name, "metadata_sha256": "0" * 64},
        # The attacker controls the whole folder, so the recorded hash can match: the restricted
        # unpickler is what refuses it.
        "inside, matching hash": {"name": inside.name, "metadata_sha256": _sha(inside / ".metadata")},
        "not a dict": ["dcp_00000099"],
    }


VARIANTS = ["absolute path (legacy string)", "relative name (legacy string)", "absolute path in name",
            "parent traversal", "inside, wrong hash", "inside, matching hash", "not a dict"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_sharded_exploit_runs_nothing(world, tmp_path, capsys, variant):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(world["run"], run)
    marker = tmp_path / "PWNED"
    ref = _variants(run, tmp_path / "elsewhere", marker)[variant]
    _edit_newest(run, sharded=ref, optimizer={})
    line = expect_user_error(["train", *train_argv(world["data"], run, resume="true")], capsys, tmp_path)
    assert not marker.exists()
    assert "sharded" in line or "DCP" in line


def test_symlinked_dcp_folder_is_refused(world, tmp_path):
    marker = tmp_path / "PWNED"
    far = _evil_folder(tmp_path / "elsewhere", marker)
    ckdir = tmp_path / "run" / "checkpoints"
    ckdir.mkdir(parents=True)
    (ckdir / "dcp_00000001").symlink_to(far, target_is_directory=True)
    with pytest.raises(UserError, match="not a folder inside"):
        dist_.load_sharded(tmp_path / "run", {"name": "dcp_00000001", "metadata_sha256": _sha(far / ".metadata")},
                           torch.nn.Linear(2, 2), None)
    assert not marker.exists()


def test_metadata_naming_files_outside_its_folder_is_refused(tmp_path):
    """A DCP metadata made only of allowed classes may still point its shards at ../ paths."""
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters())
    ref = dist_.save_sharded(tmp_path, 5, model, opt, dist_.Dist())
    meta = tmp_path / "checkpoints" / ref["name"] / ".metadata"
    md = pickle.loads(meta.read_bytes())
    for info in md.storage_data.values():
        info.relative_path = "../../secret.bin"
    meta.write_bytes(pickle.dumps(md))
    with pytest.raises(UserError, match="outside its folder"):
        dist_.load_sharded(tmp_path, {"name": ref["name"], "metadata_sha256": _sha(meta)}, model, opt)


def test_save_then_load_sharded_roundtrip(tmp_path):
    """What gptlab wrote loads: the restricted unpickler knows every class real DCP metadata uses."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    ref = dist_.save_sharded(tmp_path, 12, model, opt, dist_.Dist())
    assert ref["name"] == "dcp_00000012"
    assert ref["metadata_sha256"] == _sha(tmp_path / "checkpoints" / "dcp_00000012" / ".metadata")
    fresh = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    fresh_opt = torch.optim.AdamW(fresh.parameters(), lr=1e-2)
    dist_.load_sharded(tmp_path, ref, fresh, fresh_opt)
    for a, b in zip(model.state_dict().values(), fresh.state_dict().values()):
        assert torch.equal(a, b)
    st = fresh_opt.state_dict()["state"]
    assert st and torch.equal(st[0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])


def _unsafe_calls(tree) -> list[str]:
    """torch.load without weights_only=True, any pickle.load(s)/Unpickler use outside the DCP
    metadata reader, and np.load(allow_pickle=True), found in the syntax tree (not in strings)."""
    import ast

    bad = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = ast.unparse(node.func)
        kw = {k.arg: ast.unparse(k.value) for k in node.keywords}
        if name == "torch.load" and kw.get("weights_only") != "True":
            bad.append(ast.unparse(node))
        if name in ("pickle.load", "pickle.loads", "np.load", "numpy.load") and kw.get("allow_pickle") == "True":
            bad.append(ast.unparse(node))
        if name in ("pickle.load", "pickle.loads", "pickle.Unpickler", "dill.load", "joblib.load"):
            bad.append(ast.unparse(node))
    return bad


def test_no_unsafe_loads_in_the_package():
    """Audit: every torch.load is weights_only=True; no pickle.load, no np.load(allow_pickle=True).
    The only unpickler is DCP's metadata reader in distributed.py, restricted to DCP's classes."""
    import ast
    from pathlib import Path

    import gptlab

    root = Path(gptlab.__file__).parent
    found = {str(f.relative_to(root)): _unsafe_calls(ast.parse(f.read_text(encoding="utf-8")))
             for f in root.rglob("*.py")}
    assert {f: b for f, b in found.items() if b} == {}
    assert _unsafe_calls(ast.parse("import torch\ntorch.load(p)\nnp.load(p, allow_pickle=True)")) != []


def test_sharded_checkpoint_of_another_model_is_one_line(tmp_path):
    """Verified metadata, but shards that do not fit: a UserError, not DCP's multi-line traceback."""
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters())
    ref = dist_.save_sharded(tmp_path, 1, model, opt, dist_.Dist())
    (tmp_path / "checkpoints" / ref["name"] / "__0_0.distcp").write_bytes(b"short")
    other = torch.nn.Linear(3, 2)
    with pytest.raises(UserError, match="cannot be loaded") as e:
        dist_.load_sharded(tmp_path, ref, other, torch.optim.AdamW(other.parameters()))
    assert "\n" not in str(e.value)
