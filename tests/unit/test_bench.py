"""bench / throughput CPU modes, the chunked loss against F.cross_entropy, the one MFU formula."""

import json

import pytest
import torch
import torch.nn.functional as F

from gptlab import bench
from gptlab.errors import UserError
from gptlab.metrics import mfu
from gptlab.model import GPT, GPTShape, chunked_cross_entropy, flops_per_token

TINY = ["--n_layer", "1", "--n_embd", "32", "--n_head", "2", "--seq_len", "16", "--vocab_size", "100",
        "--gradient_accumulation_steps", "2", "--batch_size", "2"]


def _shape(vocab=100, padded=128):
    return GPTShape(n_layer=2, n_head=2, n_embd=32, head_dim=16, mlp_dim=64, block_size=16,
                    vocab_size=vocab, padded_vocab=padded)


@pytest.mark.parametrize("chunk", [1, 7, 16, 1000])
def test_chunked_ce_matches_cross_entropy_values_and_grads(chunk):
    torch.manual_seed(chunk)
    n, c, vocab, padded = 37, 24, 50, 64  # padded rows must act as if sliced off
    x = torch.randn(n, c, dtype=torch.float32, requires_grad=True)
    w = torch.randn(padded, c, dtype=torch.float32, requires_grad=True)
    t = torch.randint(0, vocab, (n,))
    t[::4] = -1  # ignore_index
    got = chunked_cross_entropy(x, w, t, vocab, chunk)
    gx, gw = torch.autograd.grad(3.0 * got, (x, w))  # a non-unit upstream gradient too
    ref = F.cross_entropy((x @ w.t())[:, :vocab], t, ignore_index=-1)
    rx, rw = torch.autograd.grad(3.0 * ref, (x, w))
    # The softmax runs in fp32 by design (like the plain path's .float()).
    assert torch.allclose(got, ref, rtol=1e-5, atol=1e-6)
    assert torch.allclose(gx, rx, rtol=1e-5, atol=1e-6)
    assert torch.allclose(gw, rw, rtol=1e-5, atol=1e-6)
    assert gw[vocab:].abs().max() == 0  # padded rows get no gradient


def test_chunked_ce_fp16_gradients_do_not_underflow_before_the_loss_scale():
    # fp16 + GradScaler: the upstream gradient carries the loss scale (65536 here). The
    # 1/n_valid of the mean must meet that scale in fp32, not be applied to fp16
    # (softmax - onehot) first: p/n = 1e-3/4096 sits near fp16's subnormal floor.
    torch.manual_seed(0)
    n, c, vocab = 4096, 16, 1000
    x32 = torch.randn(n, c) * 0.1
    w32 = torch.randn(vocab, c) * 0.1
    t = torch.randint(0, vocab, (n,))
    x16 = x32.half().requires_grad_(True)
    w16 = w32.half().requires_grad_(True)
    got = chunked_cross_entropy(x16, w16, t, vocab, 1024)
    gx, gw = torch.autograd.grad(65536.0 * got, (x16, w16))
    xr = x16.detach().double().requires_grad_(True)
    wr = w16.detach().double().requires_grad_(True)
    rx, rw = torch.autograd.grad(65536.0 * F.cross_entropy(xr @ wr.t(), t), (xr, wr))
    assert torch.isfinite(gx).all() and torch.isfinite(gw).all()
    rel = lambda a, b: ((a.double() - b).norm() / b.norm()).item()  # noqa: E731
    assert rel(gx, rx) < 5e-3, rel(gx, rx)
    assert rel(gw, rw) < 5e-3, rel(gw, rw)


def test_model_forward_chunked_equals_plain_path():
    torch.manual_seed(0)
    model = GPT(_shape())
    x = torch.randint(0, 100, (3, 16))
    y = torch.randint(0, 100, (3, 16))
    y[0, :5] = -1
    logits, plain = model(x, y)
    assert logits.shape[-1] == 100
    g_plain = torch.autograd.grad(plain, list(model.parameters()))
    model.ce_chunk_tokens = 10
    none, chunked = model(x, y)
    assert none is None
    g_chunk = torch.autograd.grad(chunked, list(model.parameters()))
    assert torch.allclose(plain, chunked, rtol=1e-5, atol=1e-6)
    for a, b in zip(g_plain, g_chunk):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)
    model.ce_chunk_tokens = 10  # generation/eval (no targets) still returns logits
    assert model(x)[0].shape == (3, 16, 100)


def test_mfu_uses_the_one_formula():
    s = _shape()
    fpt = flops_per_token(s, 16)
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
    shape = GPTShape(n_layer=1, n_head=2, n_embd=32, head_dim=16, mlp_dim=128, block_size=16, vocab_size=100,
                     padded_vocab=128)
    assert res["flops_per_token"] == flops_per_token(shape, 16)
    p = res["profile"]
    for k in ("trace", "kernels_csv", "kernels_png"):
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
    assert [r["batch"] for r in res["rows"]] == [1, 2, 4]
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
        bench.throughput_main(["mini", "--device", "cpu", "--min_batch", "8", "--max_batch", "2"])
