"""Checkpoint bookkeeping shared by all ranks (issue 22), on two gloo ranks on the CPU: the FSDP slow-writer
race (rank 0's previous background write pruned the dcp_ folder every rank was writing), a shard write that
fails on rank 1, and a background write that fails on rank 0 (the other rank waited in its next collective).
One launch runs every scenario (ckpt_ranks_worker.py); each test reads its scenario's outcome on both ranks.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch.distributed as tdist

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


@pytest.fixture(scope="module")
def outcome(tmp_path_factory):
    if not tdist.is_available() or not tdist.is_gloo_available():
        pytest.skip("this torch build has no gloo backend")
    out = tmp_path_factory.mktemp("ranks")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    res = subprocess.run([sys.executable, str(HERE / "ckpt_ranks_worker.py"), str(out)], env=env, cwd=out,
                         capture_output=True, text=True, timeout=240)
    results = {}
    for f in out.glob("*.json"):
        name, rank = f.stem.rsplit(".", 1)
        results.setdefault(name, {})[int(rank)] = json.loads(f.read_text())
    return results, res


def _both(outcome, scenario) -> tuple[dict, dict]:
    results, res = outcome
    got = results.get(scenario, {})
    assert set(got) == {0, 1}, f"{scenario}: ranks {sorted(got)} reported (rc {res.returncode})\n{res.stderr[-3000:]}"
    return got[0], got[1]


def test_a_slow_background_write_never_prunes_the_folder_being_written(outcome):
    for rank in _both(outcome, "slow_writer"):
        assert rank["error"] is None, rank["error"]
        assert rank["newest"] == 2 and rank["folders"] == ["dcp_00000002"], rank  # dcp_1 pruned, dcp_2 whole
        assert rank["loaded"] is True, rank["loaded"]


@pytest.mark.parametrize("scenario", ["shard_write_fails_on_rank_1", "background_write_fails_on_rank_0"])
def test_a_failed_write_stops_every_rank_with_the_same_line(outcome, scenario):
    first, second = _both(outcome, scenario)
    assert first["error"] is not None and first["error"] == second["error"], (first, second)
    assert first["type"] == second["type"] == "UserError" and "\n" not in first["error"]
    assert first["error"].startswith("disk full while writing"), first["error"]
    if scenario == "shard_write_fails_on_rank_1":
        assert "dcp_00000001" in first["error"] and "(rank 1)" in first["error"]
