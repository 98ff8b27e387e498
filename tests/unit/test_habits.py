"""Both users' habits: nanoGPT config files and flags, Languini flags, presets, one-line CLI errors."""

import pytest

from gptlab import cli
from gptlab.config import NO_MEANING, PRESETS, help_text
from gptlab.config_files import build_config, parse_overrides
from gptlab.errors import UserError
from gptlab.resolve import resolve, resolve_batch

# Written in nanoGPT's config-file format with the train_shakespeare_char recipe's keys and values.
SHAKESPEARE_CHAR = """\
# a miniature character-level model

out_dir = 'out-shakespeare-char'
eval_interval = 250 # frequent evals: it overfits
eval_iters = 200
log_interval = 10

always_save_checkpoint = False

wandb_log = False # on from the command line if you like
wandb_project = 'shakespeare-char'
wandb_run_name = 'mini-gpt'

dataset = 'shakespeare_char'
gradient_accumulation_steps = 1
batch_size = 64
block_size = 256 # characters of context

n_layer = 6
n_head = 6
n_embd = 384
dropout = 0.2

learning_rate = 1e-3
max_iters = 5000
lr_decay_iters = 5000
min_lr = 1e-4
beta2 = 0.99

warmup_iters = 100

# device = 'cpu'
# compile = False
"""

FINETUNE = """\
import time

out_dir = 'out-shakespeare'
eval_interval = 5
wandb_run_name = 'ft-' + str(time.time())
dataset = 'shakespeare'
init_from = 'gpt2-xl'
batch_size = 1
gradient_accumulation_steps = 32
max_iters = 20
learning_rate = 3e-5
decay_lr = False
"""


def _write(tmp_path, text, name="c.py"):
    f = tmp_path / name
    f.write_text(text)
    return str(f)


def test_nanogpt_shakespeare_char_config_file(tmp_path):
    cfg = build_config(None, _write(tmp_path, SHAKESPEARE_CHAR, "train_shakespeare_char.py"))
    m, o, t, lg = cfg.model, cfg.optim, cfg.train, cfg.log
    assert (m.n_layer, m.n_head, m.n_embd, m.block_size, m.dropout) == (6, 6, 384, 256, 0.2)
    assert (o.learning_rate, o.min_lr, o.beta2, o.warmup_iters, o.lr_decay_iters) == (1e-3, 1e-4, 0.99, 100, 5000)
    assert (t.batch_size, t.gradient_accumulation_steps, t.max_iters, t.eval_interval, t.eval_iters) == \
        (64, 1, 5000, 250, 200)
    assert (lg.out_dir, lg.log_interval, lg.wandb_project, lg.wandb_run) == \
        ("out-shakespeare-char", 10, "shakespeare-char", "mini-gpt")
    assert cfg.data.dataset == "shakespeare_char" and t.always_save_checkpoint is False
    # Keys the file leaves out are nanoGPT's train.py defaults, not gptlab's: bias off, exact GELU.
    assert (m.bias, m.gelu, o.weight_decay, o.grad_clip) == (False, "exact", 0.1, 1.0)
    assert cfg.preset == "train_shakespeare_char"


def test_nanogpt_gpt2_file_arithmetic_and_command_line_overrides(tmp_path):
    f = _write(tmp_path, "batch_size = 12\nblock_size = 1024\ngradient_accumulation_steps = 5 * 8\n"
                         "wandb_run_name='gpt2-124M'\nmax_iters = 600000\nlr_decay_iters = max_iters\n")
    cfg = build_config(None, f, parse_overrides(["--device=cpu", "--compile=False", "--max_iters=10"]))
    assert cfg.train.gradient_accumulation_steps == 40 and cfg.optim.lr_decay_iters == 600000
    assert (cfg.system.device, cfg.system.compile, cfg.train.max_iters) == ("cpu", "none", 10)
    assert resolve_batch(cfg, 8) == (12, 5, 480)


def test_nanogpt_finetune_file_with_a_computed_run_name(tmp_path, capsys):
    cfg = build_config(None, _write(tmp_path, FINETUNE))
    assert "wandb_run_name is computed" in capsys.readouterr().err
    assert cfg.train.init_from == "gpt2-xl" and cfg.optim.decay_lr is False and cfg.log.wandb_run == "gpt2"
    assert resolve_batch(cfg, 1) == (1, 32, 32)


@pytest.mark.parametrize("line", [
    "batch_size = int(open('n.txt').read())",
    "out_dir = __import__('os').system('touch pwned')",
    "if True:\n    batch_size = 3",
    "max_iters = 10 ** 10 ** 10",
])
def test_nanogpt_file_code_is_refused_naming_the_line(tmp_path, line, monkeypatch):
    monkeypatch.chdir(tmp_path)
    f = _write(tmp_path, "# header\nn_layer = 2\n" + line + "\n")
    with pytest.raises(UserError, match=r"c\.py:3: "):
        build_config(None, f)
    assert not (tmp_path / "pwned").exists()


def test_nanogpt_file_unknown_key_and_syntax_error(tmp_path):
    with pytest.raises(UserError, match=r":2: unknown config key 'n_layr': did you mean --n_layer"):
        build_config(None, _write(tmp_path, "n_head = 2\nn_layr = 2\n"))
    with pytest.raises(UserError, match=r":1: not a readable"):
        build_config(None, _write(tmp_path, "n_layer = = 2\n"))


def test_every_languini_flag_parses(capsys):
    ov = parse_overrides(["--log_activations_every", "100", "--logger_type", "wandb", "--wandb_project_name", "p",
                          "--relative_log_path", "6h/small", "--debug", "--use_flash", "True",
                          "--test_batch_size", "8", "--wandb_run", "r1"])
    cfg = build_config("mini", overrides=ov)
    lg = cfg.log
    assert (lg.logger_type, lg.wandb_project, lg.relative_log_path, lg.wandb_run) == ("wandb", "p", "6h/small", "r1")
    assert cfg.train.eval_batch_size == 8
    err = capsys.readouterr().err
    for flag in ("--log_activations_every", "--debug", "--use_flash"):
        assert sum(flag in line for line in err.splitlines()) == 1  # one note line each
    with pytest.raises(UserError, match="not one of"):
        build_config("mini", overrides=parse_overrides(["--logger_type", "csv"]))


def test_relative_log_path_places_the_run_under_log_root():
    from gptlab.resolve import run_dir

    cfg = build_config("mini", overrides={"relative_log_path": "6h/small", "log_root": "logs"})
    assert run_dir(cfg).parent.as_posix() == "logs/6h/small"
    with pytest.raises(UserError, match="must stay under --log_root"):
        run_dir(build_config("mini", overrides={"relative_log_path": "../../etc"}))


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_builds_validates_and_resolves(name, monkeypatch):
    from gptlab import resolve as resolution

    monkeypatch.setattr(resolution, "check_memory", lambda cfg: None)  # gpt2-xl on a small CI host is not the point
    cfg = build_config(name)
    for world in (1, 8):
        final = resolve(cfg, world_size=world, device="cpu", data_meta=None)
        split = resolve_batch(cfg, world)
        assert final.train.train_batch_size == split.global_batch == split.micro * split.accum * world
        if cfg.train.gradient_accumulation_steps > 1:  # accumulation is global: the batch does not grow with ranks
            assert split.global_batch == resolve_batch(cfg, 1).global_batch


def test_finetune_preset_learning_rates():
    o = build_config("finetune_shakespeare").optim
    assert o.min_lr <= o.learning_rate == 3e-5 and o.decay_lr is False


def test_train_preset_help_shows_the_presets_values(capsys):
    assert cli.main(["train", "baby", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--n_layer [n_layers] = 4*" in out and "--max_iters [max_train_steps, max_steps] = 2000*" in out
    assert "--n_layer [n_layers] = 12\n" in help_text()  # without a preset: the defaults
    assert cli.main(["train", "--help"]) == 0
    assert "= 4*" not in capsys.readouterr().out
    for flag in NO_MEANING:
        assert flag in out


@pytest.mark.parametrize("argv, needle", [
    (["train", "bbay"], "did you mean 'baby'?"),
    (["sample", "--temprature", "1"], "did you mean --temperature?"),
    (["eval", "--last-n", "128"], "did you mean --last_n?"),
    (["export", "run", "out", "--to", "hf", "--overwite"], "did you mean --overwrite?"),
])
def test_bad_flag_is_one_line_with_the_closest_flag(argv, needle, capsys):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0]


def test_model_command_says_where_its_vocab_came_from(tmp_path, monkeypatch, capsys, char_dataset):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["model", "baby", "--data_root", str(tmp_path / "nowhere")]) == 0
    assert "vocab 50257 (padded 50304; assumed GPT-2 BPE" in capsys.readouterr().out
    assert cli.main(["model", "baby", "--dataset", str(char_dataset)]) == 0
    out = capsys.readouterr().out
    assert f"vocab 34 (padded 64; from {char_dataset}/meta.json)" in out  # the 34 characters of the data


def test_languini_logger_flags_reach_the_sinks(tmp_path, monkeypatch):
    import sys
    import types

    from gptlab.tracker import RunLogger

    seen = {}
    run = types.SimpleNamespace(log=lambda *a, **k: None, finish=lambda *a, **k: None)
    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=lambda **kw: seen.update(kw) or run))
    cfg = build_config("mini", overrides=parse_overrides(["--logger_type", "wandb", "--wandb_project_name", "p",
                                                          "--wandb_run", "r1", "--progress", "off"]))
    logger = RunLogger(tmp_path, cfg)
    assert (seen["project"], seen["name"]) == ("p", "r1") and logger.tb is None  # wandb only: no TensorBoard
