"""The loop's parts in-process: train_step's on-device skip, TrainState's round trip, the entropy gap."""

from __future__ import annotations

import math

import pytest
import torch

from gptlab.metrics import entropy_gap
from gptlab.train import TrainState, train_step


def _model_and_opt():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1, fused=True)
    return model, opt


def _loss(bad: bool):
    return lambda m, x, y: torch.nn.functional.cross_entropy(m(x), y) * (float("nan") if bad else 1.0)


@pytest.mark.parametrize("bad", [False, True])
def test_train_step_skips_a_non_finite_step_on_the_device(bad):
    model, opt = _model_and_opt()
    before = [p.detach().clone() for p in model.parameters()]
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    batches = [(torch.randn(5, 4), torch.randint(0, 3, (5,))) for _ in range(2)]
    out = train_step(model, opt, scaler, batches, ctx=torch.autocast("cpu", enabled=False), clip=1.0,
                     loss_fn=_loss(bad))
    moved = any(not torch.equal(a, p) for a, p in zip(before, model.parameters()))
    assert bool(out.bad) == bad and moved == (not bad)
    assert all(p.grad is None for p in model.parameters())  # zero_grad(set_to_none) after the step


def test_train_state_round_trip():
    st = TrainState(step=7, tokens=700, best_val=1.5, train_time=3.0)
    st.bad_total.fill_(2)
    st.consec_bad.fill_(1)
    saved = dict(st.state_dict(), step=st.step, loop={"consec_bad": st.consec_bad.clone()})
    back = TrainState()
    back.load_state_dict(saved)
    assert (back.step, back.tokens, back.best_val, back.train_time) == (7, 700, 1.5, 3.0)
    assert int(back.bad_total) == 2 and int(back.consec_bad) == 1


def test_entropy_gap_comes_from_the_data_meta():
    bound = -(1 / 3) * math.log(1 / 3) - (2 / 3) * math.log(2 / 3)
    line = entropy_gap({"source": {"p_zero": 1 / 3}}, {"loss": 9.0, "loss_excl_eot": bound * 1.01})
    assert f"gap to entropy bound {bound:.4f}: +1.00%" in line
    assert entropy_gap({"source": {"kind": "text"}}, {"loss": 1.0}) == ""


def test_a_mistyped_split_name_is_one_line_with_the_closest_name(tmp_path):
    from gptlab.config_files import build_config
    from gptlab.errors import UserError
    from gptlab.train import pick_splits

    meta = {"splits": {"train": {}, "validation": {}, "test": {}}}
    cfg = build_config("baby")
    assert pick_splits(cfg, tmp_path, meta) == ["train", "test"]  # the default "val" falls back to test
    cfg.data.val_split = "validaton"
    with pytest.raises(UserError, match=r"--val_split 'validaton'.*has: train, validation, test.*did you mean "
                                        r"'validation'\?") as e:
        pick_splits(cfg, tmp_path, meta)
    assert "\n" not in str(e.value)
    cfg.data.val_split, cfg.data.train_split = "test", "trian"
    with pytest.raises(UserError, match=r"--train_split 'trian'.*did you mean 'train'\?"):
        pick_splits(cfg, tmp_path, meta)


def test_a_mistyped_dataset_name_suggests_the_closest_prepared_one(tmp_path):
    from gptlab.errors import UserError
    from gptlab.runtime import resolve_data_dir

    for name in ("shakespeare_char", "books16384"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "meta.json").write_text("{}")
    (tmp_path / "shakespeare").mkdir()  # no meta.json: not a prepared dataset
    assert resolve_data_dir("books16384", str(tmp_path)) == tmp_path / "books16384"
    with pytest.raises(UserError, match=r"did you mean --dataset shakespeare_char\?$") as e:
        resolve_data_dir("shakespear_char", str(tmp_path))
    assert "prepare shakespear_char" not in str(e.value)  # never sends the user to prepare the typo
    with pytest.raises(UserError) as e:
        resolve_data_dir("zzz", str(tmp_path))
    assert "did you mean" not in str(e.value)
