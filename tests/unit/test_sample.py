"""`gptlab sample` speaks nanoGPT's sample.py: its options, defaults, FILE: prompts, <|endoftext|>,
and sampling straight from GPT-2-format weights without a run; the sampling functions."""

import pytest
import torch

from gptlab import cli, hf, sample
from gptlab.data.tokenizers import CharTokenizer
from gptlab.errors import UserError
from gptlab.generate import filter_logits
from gptlab.generate import sample as draw


def _gpt2_tokenizer_or_skip():
    from gptlab.data.tokenizers import GPT2Tokenizer

    try:
        return GPT2Tokenizer()
    except UserError:
        pytest.skip("GPT-2 vocabulary not available offline")


def test_nanogpt_defaults_and_aliases():
    a = sample.build_parser().parse_args(["--out_dir", "out-shakespeare-char", "--compile=False"])
    assert (a.num_samples, a.max_new_tokens, a.temperature, a.top_k, a.seed, a.start) == (10, 500, 0.8, 200, 1337, "\n")
    assert a.run == "out-shakespeare-char" and a.init_from == "resume" and a.compile is False
    assert sample.build_parser().parse_args(["--prompt", "hi"]).start == "hi"


def test_start_from_a_file(tmp_path):
    (tmp_path / "prompt.txt").write_text("ROMEO:\n", encoding="utf-8")
    assert sample.read_start(f"FILE:{tmp_path / 'prompt.txt'}") == "ROMEO:\n"
    assert sample.read_start("plain text") == "plain text"
    with pytest.raises(UserError, match="FILE:"):
        sample.read_start(f"FILE:{tmp_path / 'missing.txt'}")


def test_endoftext_in_the_prompt_is_the_special_token():
    tok = _gpt2_tokenizer_or_skip()
    ids = sample.encode_prompt(tok, "Hi<|endoftext|>there")
    assert ids == tok.encode("Hi") + [50256] + tok.encode("there")
    assert sample.encode_prompt(tok, "<|endoftext|>") == [50256]
    with pytest.raises(UserError, match="no end-of-text token"):
        sample.encode_prompt(CharTokenizer(list("ab<|>endoftx")), "a<|endoftext|>")


def test_init_from_a_gpt2_folder_without_a_run(tmp_path, capsys):
    _gpt2_tokenizer_or_skip()
    from dataclasses import replace

    from gptlab.config import ModelConfig
    from gptlab.model import GPT

    torch.manual_seed(0)
    shape = replace(ModelConfig(n_layer=1, n_head=2, n_embd=16, block_size=32), vocab_size=50257)
    hf.export_hf(GPT(shape).init_weights(), tmp_path / "hf")
    assert cli.main(["sample", "--init_from", str(tmp_path / "hf"), "--num_samples", "2", "--max_new_tokens", "3",
                     "--start", "Hello<|endoftext|>", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert out.count("Hello<|endoftext|>") == 2 and "6 tokens" in out


def test_two_models_named_is_an_error(capsys):
    assert cli.main(["sample", "--init_from", "gpt2", "--out_dir", "somewhere"]) == 2
    assert "name two models" in capsys.readouterr().err
    assert cli.main(["sample"]) == 2
    assert "--init_from gpt2" in capsys.readouterr().err


def test_filtered_probabilities():
    logits = torch.tensor([[1.0, 5.0, 3.0, 4.0]])
    assert torch.equal(filter_logits(logits, top_k=1).softmax(-1), torch.tensor([[0.0, 1.0, 0.0, 0.0]]))
    p = filter_logits(logits, temperature=2.0).softmax(-1)
    torch.testing.assert_close(p, torch.softmax(logits / 2, -1))


def test_sample_draws_with_the_right_frequencies():
    # 30,000 rows of one distribution: the exponential race must pick each token as often as p says.
    probs = torch.tensor([0.6, 0.3, 0.1, 0.0])
    logits = probs.log().expand(30000, 4)
    picks = draw(logits, temperature=1.0, generator=torch.Generator().manual_seed(0))
    assert picks.shape == (30000, 1)
    freq = torch.bincount(picks[:, 0], minlength=4).float() / 30000
    torch.testing.assert_close(freq, probs, atol=0.015, rtol=0)
    assert torch.equal(draw(logits[:2], temperature=0), torch.zeros(2, 1, dtype=torch.long))  # greedy
