"""bench / throughput CPU modes, the one MFU formula."""

import json

import pytest
import torch

from gptlab import bench
from gptlab.config import ModelConfig
from gptlab.errors import UserError
from gptlab.metrics import mfu
from gptlab.model import GPT

TINY = ["--n_layer", "1", "--n_embd", "32", "--n_head", "2", "--seq_len", "16", "--vocab_size", "100",
        "--gradient_accumulation_steps", "2", "--batch_size", "2"]


def _model(vocab=100, n_layer=2, mlp_dim=64):
    with torch.device("meta"):
        return GPT(ModelConfig(n_layer=n_layer, n_head=2, n_embd=32, head_dim=16, mlp_dim=mlp_dim, block_size=16,
                               vocab_size=vocab))


def test_mfu_uses_the_one_formula():
    model = _model()
    s = model.config
    fpt = model.flops_per_token(16)
    # 6N + 12*L*H*Q*T with N the matmul weights (output layer on the padded vocab)
    n = s.n_layer * (32 * 3 * 32 + 32 * 32 + 2 * 32 * 64) + 32 * 128
    assert fpt == 6 * n + 12 * 2 * 2 * 16 * 16
    r = bench._rates(fpt, tokens_per_step=1000, ms=10.0, peak=1e12, mm_tflops=0.5)
    assert r["tokens_per_sec"] == pytest.approx(1e5)
    assert r["mfu_table"] == pytest.approx(mfu(fpt, 1e5, 1e12))
    assert r["tflops"] == pytest.approx(fpt * 1e5 / 1e12)
    assert r["mfu_matmul"] == pytest.approx(fpt * 1e5 / 0.5e12)


def test_bench_cpu_json(tmp_path, capsys):
    out = tmp_path / "b.json"
    prof = tmp_path / "prof" / "p"
    assert bench.main(["gpt2", *TINY, "--steps", "2", "--warmup", "1", "--device", "cpu", "--ce_chunk", "8",
                       "--profile", str(prof), "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    for key in ("tokens_per_sec", "ms_per_step", "ms_per_step_median", "tflops", "mfu_table", "mfu_matmul",
                "matmul_tflops", "peak_mem_gb", "compile_s", "flops_per_token", "device", "date", "command",
                "batch_size", "seq_len", "accum", "tokens_per_step", "params"):
        assert key in res, key
    assert res["device"] == "cpu" and res["compile"] == "none" and res["mfu_table"] is None
    assert res["batch_size"] == 2 and res["seq_len"] == 16 and res["accum"] == 2 and res["tokens_per_step"] == 64
    assert res["tokens_per_sec"] > 0 and res["ms_per_step"] > 0
    assert res["tokens_per_sec"] == pytest.approx(64 / (res["ms_per_step"] / 1000))
    model = _model(n_layer=1, mlp_dim=128)
    assert res["flops_per_token"] == model.flops_per_token(16)
    p = res["profile"]
    for k in ("trace", "kernels_csv"):
        assert (tmp_path / "prof" / p[k].split("/")[-1]).is_file()
    assert p["kernels_csv"].endswith(".csv") and len(open(p["kernels_csv"]).read().splitlines()) > 2
    assert "gptlab" in capsys.readouterr().out


def test_throughput_cpu_sweep(tmp_path):
    out, csv_path = tmp_path / "t.json", tmp_path / "t.csv"
    assert bench.throughput_main(["mini", "--n_layer", "1", "--n_embd", "32", "--n_head", "2", "--head_dim", "16",
                                  "--mlp_dim", "64", "--seq_len", "16", "--last_n", "0", "--vocab_size", "100",
                                  "--device", "cpu", "--max_batch", "4", "--warmup", "1", "--rounds", "2",
                                  "--csv", str(csv_path), "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert [r["batch"] for r in res["rows"]] == [1, 3, 4]  # 1, (8 too big), (5 too big), 3, 4: the benchmark's bisection
    assert res["largest_batch"] == 4 and res["train_batch_size"] == 128
    assert [c["hours"] for c in res["classes"]] == [6, 12, 24, 48, 96]
    tps = res["best"]["tokens_per_sec"]
    assert res["classes"][0]["steps"] == round(6 * 3600 * tps / (128 * 16))
    assert res["compile"] == "none" and res["dtype"] == "float32"
    assert all(r["tokens_per_sec"] > 0 and r["ms_per_step"] > 0 for r in res["rows"])
    assert res["best"]["tokens_per_sec"] == max(r["tokens_per_sec"] for r in res["rows"])
    lines = csv_path.read_text().splitlines()
    assert lines[0] == "batch,tokens_per_sec,ms_per_step,peak_mem_gb" and len(lines) == 4


def test_bad_arguments_are_user_errors():
    with pytest.raises(UserError):
        bench.main(["gpt2", *TINY, "--steps", "0", "--device", "cpu"])
    with pytest.raises(UserError):
        bench.main(["gpt2", "--peer", "nobody"])
    with pytest.raises(UserError):
        bench.throughput_main(["mini", "--device", "cpu", "--batch_size_step", "0"])


# The batch sizes the benchmark's own sweep tried on its RTX 3090 (its throughput_results.csv),
# given the largest batch that fitted there.
@pytest.mark.parametrize("largest,tried", [
    (34, [1, 8, 16, 24, 32, 40, 36, 34, 35]),  # small
    (11, [1, 8, 16, 12, 10, 11]),  # medium
    (97, [1, 8, 16, 24, 32, 40, 48, 56, 64, 72, 80, 88, 96, 104, 100, 98, 97]),  # mini
    (77, [1, 8, 16, 24, 32, 40, 48, 56, 64, 72, 80, 76, 78, 77]),  # tiny
])
def test_languini_batch_sweep_order(largest, tried):
    seen = []

    def measure(b):
        seen.append(b)
        return None if b > largest else {"batch": b}

    rows = bench.languini_batch_sweep(measure)
    assert seen == tried and max(rows) == largest and all(b <= largest for b in rows)
    assert bench.languini_batch_sweep(lambda b: None) == {}  # not even batch 1 fits
