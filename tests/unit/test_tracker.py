"""RunLogger: sinks picked by --logger_type; train and eval losses under distinct TensorBoard tags."""

from __future__ import annotations

import json

import pytest

from gptlab.config_files import build_config
from gptlab.tracker import RunLogger


class _TB:
    def __init__(self):
        self.tags = []

    def add_scalar(self, tag, value, step):
        self.tags.append(tag)

    def close(self):
        pass


def test_eval_records_keep_training_tokens_and_distinct_tags(tmp_path):
    cfg = build_config("baby", overrides={"logger_type": "tb", "progress": "off"})
    log = RunLogger(tmp_path, cfg)
    log.tb = tb = _TB()
    log.log("train", 10, 1000, {"loss": 2.0})
    log.log("eval", 10, 1000, {"loss": 2.5, "split": "train", "eval_tokens": 64})
    log.close()
    recs = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["tokens"] for r in recs] == [1000, 1000]
    assert "train/loss" in tb.tags and "eval/train/loss" in tb.tags and tb.tags.count("train/loss") == 1


@pytest.mark.parametrize("kind,tb,wandb", [("tb", True, False), ("", False, False)])
def test_logger_type_picks_the_sinks(tmp_path, kind, tb, wandb):
    pytest.importorskip("torch.utils.tensorboard")
    cfg = build_config("baby", overrides={"logger_type": kind, "tensorboard": "false", "progress": "off"})
    log = RunLogger(tmp_path, cfg)
    assert (log.tb is not None, log.wandb is not None) == (tb, wandb)
    log.close()
