"""`gptlab demo`: the README's main job: tiny Shakespeare, character model on CPU, a sample."""

from __future__ import annotations

from pathlib import Path


def demo_argv(argv: list[str]) -> list[str]:
    """The demo run's own `gptlab train` arguments, so the resume command it prints works. A shorter
    demo (--max_iters N) decays its learning rate over its own N steps, as the full one does."""
    from gptlab.config_files import parse_overrides

    keys = parse_overrides(argv)
    decay = ["--lr_decay_iters",
             str(keys["max_iters"])] if "max_iters" in keys and "lr_decay_iters" not in keys else []
    return ["baby", "--out_dir", "out/demo", "--overwrite", "true", *decay, *argv]


def main(argv: list[str]) -> int:
    from gptlab import sample
    from gptlab.commands.train import config_from_argv
    from gptlab.data.prepare import prepare
    from gptlab.train import train

    train_argv = demo_argv(argv)
    data_dir = Path("data/shakespeare_char")
    if not (data_dir / "meta.json").is_file():
        prepare("shakespeare_char", out=data_dir)
    summary = train(config_from_argv(train_argv), train_argv)
    if val := (summary.get("eval") or {}).get("val"):
        print(f"final val loss {val['loss']:.4f}")
    return sample.main(["--run", summary["run_dir"], "--num_samples", "1", "--max_new_tokens", "500"])
