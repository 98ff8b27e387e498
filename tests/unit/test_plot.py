import json
import struct

import pytest

pytest.importorskip("matplotlib")

from gptlab.errors import UserError  # noqa: E402
from gptlab.plot import main, make_figure, read_metrics, short_labels  # noqa: E402

NAME = ("GPT_books16384_bsz128_micro32_sl512_coslr0.0006to6e-06_h768_ff3072_nH12_dH64_nl12_"
        "clip0.0_decay18k_gpus1_defaultCompile_fp16_seed{seed}")
TPS = 1000.0
TOK_PER_STEP = 128 * 512


def _write_run(root, seed, n_steps=60, eval_every=20, tps=TPS, truncate=False):
    run = root / "6h" / "small" / NAME.format(seed=seed)
    run.mkdir(parents=True)
    lines = []
    for step in range(1, n_steps + 1):
        tokens = step * TOK_PER_STEP
        hours = tokens / tps / 3600 if tps else None
        lines.append({"kind": "train", "step": step, "tokens": tokens, "accel_hours": hours, "time_s": step * 0.1,
                      "loss": 10.0 / step + seed, "lr": 6e-4, "ms_per_step": 100.0 + step, "tokens_per_sec": 5e5,
                      "mfu": 0.3})
        if step % eval_every == 0:
            lines.append({"kind": "eval", "step": step, "tokens": tokens, "accel_hours": hours, "time_s": step * 0.1,
                          "split": "test", "loss": 5.0 / step + seed, "ppl": 2.0, "normalised_ppl": 1.5 + seed,
                          "bpb": 1.1, "acc1": 0.3, "acc10": 0.6})
    text = "".join(json.dumps(r) + "\n" for r in lines)
    if truncate:  # a run killed while writing its last line
        text += '{"kind": "train", "step": 999, "los'
    (run / "metrics.jsonl").write_text(text)
    return run, lines


def _png_size(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_two_runs_on_one_chart(tmp_path):
    a, a_lines = _write_run(tmp_path, 0)
    b, b_lines = _write_run(tmp_path, 1, truncate=True)
    out = tmp_path / "plots" / "cmp.png"
    assert main([str(a), str(b), "--x", "hours", "--metric", "normalised_ppl", "--out", str(out)]) == 0
    w, h = _png_size(out)
    assert 400 <= w <= 3000 and 200 <= h <= 3000
    assert out.stat().st_size > 5000

    fig = make_figure([a, b], x="hours", metric="normalised_ppl")
    lines = fig.axes[0].get_lines()
    assert len(lines) == 2
    for line, src in zip(lines, (a_lines, b_lines)):
        ev = [r for r in src if r["kind"] == "eval"]
        assert list(line.get_xdata()) == pytest.approx([r["accel_hours"] for r in ev])
        assert list(line.get_ydata()) == pytest.approx([r["normalised_ppl"] for r in ev])
    # the legend shows what differs between the runs, not the shared hyperparameters
    assert [line.get_label() for line in lines] == ["seed0", "seed1"]


def test_x_tokens_and_steps(tmp_path):
    a, a_lines = _write_run(tmp_path, 0)
    ev = [r for r in a_lines if r["kind"] == "eval"]
    line = make_figure([a], x="tokens").axes[0].get_lines()[0]
    assert list(line.get_xdata()) == [r["tokens"] for r in ev]
    assert list(line.get_ydata()) == pytest.approx([r["loss"] for r in ev])
    line = make_figure([a / "metrics.jsonl"], x="steps").axes[0].get_lines()[0]
    assert list(line.get_xdata()) == [20, 40, 60]


def test_train_kind_two_panels(tmp_path):
    a, a_lines = _write_run(tmp_path, 0)
    out = tmp_path / "train.png"
    assert main([str(a), "--kind", "train", "--out", str(out)]) == 0
    _, h = _png_size(out)
    fig = make_figure([a], kind="train")
    assert len(fig.axes) == 2
    tr = [r for r in a_lines if r["kind"] == "train"]
    loss, ms = fig.axes[0].get_lines()[0], fig.axes[1].get_lines()[0]
    assert list(loss.get_xdata()) == [r["step"] for r in tr]
    assert list(loss.get_ydata()) == pytest.approx([r["loss"] for r in tr])
    assert list(ms.get_ydata()) == pytest.approx([r["ms_per_step"] for r in tr])


def test_hours_without_throughput(tmp_path):
    a, a_lines = _write_run(tmp_path, 0, tps=None)
    with pytest.raises(UserError, match="tokens_per_second"):
        make_figure([a], x="hours")
    # a throughput given at plot time supplies the hours
    line = make_figure([a], x="hours", tokens_per_second=2000.0).axes[0].get_lines()[0]
    assert line.get_xdata()[0] == pytest.approx(20 * TOK_PER_STEP / 2000.0 / 3600)


def test_resumed_run_keeps_last_record_per_step(tmp_path):
    run = tmp_path / "r"
    run.mkdir()
    recs = [{"kind": "eval", "step": s, "tokens": s, "accel_hours": None, "time_s": 0, "split": "test", "loss": v}
            for s, v in [(10, 5.0), (20, 4.0), (20, 3.5), (30, 3.0)]]
    text = json.dumps(recs[0]) + "\n" + json.dumps(recs[1]) + "\n" + '{"kind": "ev' + json.dumps(recs[2]) + "\n"
    text += json.dumps(recs[2]) + "\n" + json.dumps(recs[3]) + "\n"
    (run / "metrics.jsonl").write_text(text)
    line = make_figure([run]).axes[0].get_lines()[0]
    assert list(line.get_xdata()) == [10, 20, 30]
    assert list(line.get_ydata()) == [5.0, 3.5, 3.0]


def test_several_splits_each_get_a_line(tmp_path):
    run = tmp_path / "r"
    run.mkdir()
    recs = [{"kind": "eval", "step": s, "tokens": s, "accel_hours": None, "time_s": 0, "split": sp, "loss": s}
            for s in (1, 2) for sp in ("test", "ood")]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    labels = sorted(l.get_label() for l in make_figure([run]).axes[0].get_lines())
    assert labels == ["r (ood)", "r (test)"]
    assert len(make_figure([run], split="ood").axes[0].get_lines()) == 1
    with pytest.raises(UserError, match="splits present"):
        make_figure([run], split="val")


def test_missing_empty_and_unknown_metric(tmp_path):
    with pytest.raises(UserError, match="no metrics file"):
        read_metrics(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "metrics.jsonl").write_text("")
    with pytest.raises(UserError, match="no metrics records"):
        main([str(tmp_path / "empty"), "--out", str(tmp_path / "x.png")])
    a, _ = _write_run(tmp_path, 0)
    with pytest.raises(UserError, match="available"):
        make_figure([a], metric="perplexity")
    with pytest.raises(UserError, match=r"\.png"):
        main([str(a), "--out", str(tmp_path / "x.jpgg")])


def test_short_labels_fall_back_to_folders(tmp_path):
    a = tmp_path / "6h" / "small" / "GPT_x_seed0"
    b = tmp_path / "12h" / "small" / "GPT_x_seed0"
    assert short_labels([a, b]) == ["6h", "12h"]
    assert short_labels([a, a]) == ["GPT_x_seed0 #1", "GPT_x_seed0 #2"]
    long = tmp_path / ("y" * 200)
    assert short_labels([long]) == ["y" * 200]  # one part: never cut


def test_long_labels_keep_every_distinguishing_part(tmp_path):
    """Runs that differ in many parts, the seed and clip last, keep all of them on wrapped lines."""
    base = ("GPT_books16384_bsz{b}_micro32_sl512_coslr{lr}_h{h}_ff3072_nH12_dH64_nl{n}_"
            "clip{c}_decay{d}_gpus1_{mode}Compile_fp16_seed{s}")
    runs = ((128, "0.0006to6e-06", 768, 12, 0.0, "18k", "default", 0),
            (256, "0.0003to3e-06", 1024, 24, 0.0, "36k", "maxAutotune", 1),
            (256, "0.0003to3e-06", 1024, 24, 1.0, "36k", "maxAutotune", 0))
    names = [base.format(b=b, lr=lr, h=h, n=n, c=c, d=d, mode=mode, s=s) for b, lr, h, n, c, d, mode, s in runs]
    labels = short_labels([tmp_path / name for name in names])
    assert len(set(labels)) == 3 and not any("…" in lab or "#" in lab for lab in labels)
    for name, label in zip(names, labels):
        assert all(len(line) <= 60 for line in label.split("\n"))
        parts = set(label.replace("\n", "").split("_"))
        # every part in which this run differs from another one is in its label, whole
        differing = {t for other in names if other != name for t in set(name.split("_")) - set(other.split("_"))}
        assert differing <= parts, (differing - parts, label)


def test_eval_records_plot_at_their_training_tokens_and_hours(tmp_path):
    """Eval points sit at the training tokens (and hours) of their step, not at the count of tokens scored."""
    run, lines = _write_run(tmp_path, 0)
    ev = [r for r in lines if r["kind"] == "eval"]
    recs = [dict(r, eval_tokens=4096) if r["kind"] == "eval" else r for r in lines]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    for x, want in (("tokens", [r["tokens"] for r in ev]), ("hours", [r["accel_hours"] for r in ev])):
        line = make_figure([run], x=x).axes[0].get_lines()[0]
        assert list(line.get_xdata()) == pytest.approx(want), x
    line = make_figure([run], x="hours", tokens_per_second=2 * TPS).axes[0].get_lines()[0]
    assert list(line.get_xdata()) == pytest.approx([r["tokens"] / (2 * TPS) / 3600 for r in ev])
