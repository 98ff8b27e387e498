"""Checkpoint bookkeeping (issue 22), in-process with the real Checkpointer, TrainState and StopAgreement
on a two-layer model: only the current non-finite streak counts, best.pt is never stale, and a save holds
at most one host copy of the state.

Each rule is checked against the files it must leave (names, checksums, the step inside), worked out by
hand from the step numbers of the scenario, not from the code's own bookkeeping.
"""

from __future__ import annotations

import threading
import time
import weakref
from types import SimpleNamespace

import pytest
import torch

from gptlab import checkpoint as ck
from gptlab import distributed as dist_
from gptlab.config_files import build_config
from gptlab.train import StepOutput, TrainState


class _Metrics:
    def state_dict(self) -> dict:
        return {"loss_sum": torch.zeros(()), "loss_count": 0.0}


def _checkpointer(run, **train) -> ck.Checkpointer:
    cfg = build_config("baby", overrides=dict(max_iters=1000, log_interval=1, **train))
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.Linear(16, 4))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(2, 16)).sum().backward()
    optimizer.step()  # moments exist: the optimiser state is a real second copy
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    return ck.Checkpointer(cfg, run, dist_.Dist(), model, optimizer, scaler, SimpleNamespace(position=dict))


def _run(run, bad_steps: set[int], steps: int, **train) -> tuple[TrainState, str | None, ck.Checkpointer]:
    """The loop's order (advance, stop check, save every step), with the given steps non-finite."""
    saver = _checkpointer(run, **train)
    state, stop = TrainState(), dist_.StopAgreement(saver.cfg, dist_.Dist())
    try:
        outcome = None
        for step in range(1, steps + 1):
            bad = torch.tensor(step in bad_steps)
            state.advance(StepOutput(torch.zeros(()), torch.zeros(()), bad), tokens_per_step=1)
            outcome = stop.poll(state)
            if outcome == "diverged":
                break
            saver.save(state, _Metrics(), is_best=False)
        saver.drain()
    finally:
        stop.restore()
    return state, outcome, saver


def _steps(run) -> list[int]:
    return sorted(ck.ckpt_step(p) for p in ck.list_checkpoints(run))


@pytest.mark.parametrize("keep_last", [20, 2])
def test_a_recovered_blip_is_forgotten_and_a_divergence_keeps_what_came_before(tmp_path, keep_last):
    # Steps 3-4: a blip (2 < max_nonfinite 3) that recovers. Steps 9, 10, 11: the real divergence, seen at 11.
    state, outcome, saver = _run(tmp_path, {3, 4, 9, 10, 11}, 30, keep_last=keep_last, max_nonfinite=3)
    assert outcome == "diverged" and state.step == 11
    good = saver.way_back(state)
    # Every checkpoint before the real streak stays (keep_last permitting); 9 and 10 are set aside.
    assert _steps(tmp_path) == ([1, 2, 3, 4, 5, 6, 7, 8] if keep_last == 20 else [8])
    d = ck.checkpoint_dir(tmp_path)
    assert sorted(p.name for p in d.glob("*.diverged")) == ["ckpt_00000009.pt.diverged", "ckpt_00000010.pt.diverged"]
    assert good == d / "ckpt_00000008.pt"
    assert (d / "latest").read_text().strip() == "ckpt_00000008.pt"
    assert ck.verify(d / "model.pt") is None and ck.load_checkpoint(d / "model.pt")["step"] == 8
    state_at, path = ck.load_latest_valid(tmp_path, warn=pytest.fail)  # what --resume continues from
    assert path.name == "ckpt_00000008.pt" and state_at["step"] == 8


def test_the_streak_is_part_of_the_saved_state(tmp_path):
    _run(tmp_path, {3, 4}, 6, keep_last=20, max_nonfinite=3)
    saved = {s: ck.load_checkpoint(ck.checkpoint_dir(tmp_path) / f"ckpt_{s:08d}.pt") for s in (2, 3, 4, 5, 6)}
    starts = {s: saved[s]["nonfinite_streak_start"] for s in saved}
    assert starts == {2: None, 3: 3, 4: 3, 5: None, 6: None}  # recovered at 5: forgotten
    back = TrainState()
    back.load_state_dict(saved[4])
    assert back.streak_start == 3 and int(back.consec_bad) == 2


def test_a_divergence_with_no_valid_checkpoint_before_it_leaves_no_pointer(tmp_path):
    state, outcome, saver = _run(tmp_path, set(range(1, 100)), 30, keep_last=5, max_nonfinite=3)
    assert outcome == "diverged" and saver.way_back(state) is None
    d = ck.checkpoint_dir(tmp_path)
    assert ck.list_checkpoints(tmp_path) == []
    assert not (d / "latest").exists() and not (d / "model.pt").exists()  # they would name nothing valid
    assert ck.load_latest_valid(tmp_path, warn=lambda m: None) is None


@pytest.mark.parametrize("checkpoint_interval", [0, 4])
def test_an_improved_evaluation_is_always_saved(tmp_path, checkpoint_interval):
    saver = _checkpointer(tmp_path, checkpoint_interval=checkpoint_interval, always_save_checkpoint=False)
    assert saver.due(3, evaluated=True, improved=True, stop=None)  # 3 is no multiple of 4: best.pt would go stale
    assert not saver.due(3, evaluated=True, improved=False, stop=None)
    assert saver.due(8, evaluated=False, improved=False, stop=None) == (checkpoint_interval == 4)


def test_a_save_waits_for_the_previous_write_before_copying_the_state(tmp_path, monkeypatch):
    """Peak host copies, counted by a hook on the copy: one model + one optimiser state at most, even
    when the previous background write is still running when the next save starts."""
    live, peak, lock = [0], [0], threading.Lock()
    real_copy, real_save = ck.cpu_copy, ck.save_checkpoint

    def counting_copy(tree):
        out = real_copy(tree)
        first = next(t for t in torch.utils._pytree.tree_leaves(out) if isinstance(t, torch.Tensor))
        with lock:
            live[0] += 1
            peak[0] = max(peak[0], live[0])
        weakref.finalize(first, lambda: live.__setitem__(0, live[0] - 1))
        return out

    def slow_save(*args, **kwargs):
        time.sleep(0.3)  # a slow disk: the loop reaches its next save before this write ends
        return real_save(*args, **kwargs)

    monkeypatch.setattr(ck, "cpu_copy", counting_copy)
    monkeypatch.setattr(ck, "save_checkpoint", slow_save)
    saver, state = _checkpointer(tmp_path), TrainState()
    for step in (1, 2, 3):
        state.step = step
        saver.save(state, _Metrics(), is_best=False)
    saver.drain()
    assert peak[0] == 2, f"{peak[0]} host copies alive at once (model and optimiser count one each)"
    assert _steps(tmp_path) == [2, 3]
