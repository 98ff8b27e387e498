"""Generation: the KV cache changes speed, never tokens; sampling filters do what they say."""

import torch

from gptlab.generate import filter_logits, generate


def test_greedy_with_and_without_cache_identical(tiny_model):
    torch.manual_seed(1)
    prompt = torch.randint(0, 40, (2, 5))
    # 30 new tokens with block_size 16: crosses the point where the cache is full.
    a = generate(tiny_model, prompt, 30, temperature=0, use_cache=True)
    b = generate(tiny_model, prompt, 30, temperature=0, use_cache=False)
    assert a.shape == (2, 35)
    assert torch.equal(a, b)


def test_sampling_with_and_without_cache_identical(tiny_model):
    prompt = torch.randint(0, 40, (1, 3))
    a = generate(tiny_model, prompt, 20, temperature=1.0, top_k=10, use_cache=True,
                 generator=torch.Generator().manual_seed(7))
    b = generate(tiny_model, prompt, 20, temperature=1.0, top_k=10, use_cache=False,
                 generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, b)


def test_cached_logits_match_full_forward(tiny_model):
    x = torch.randint(0, 40, (2, 12))
    full = tiny_model(x)
    cache = tiny_model.new_cache(2)
    part1 = tiny_model(x[:, :7], cache=cache)  # prefill
    steps = [tiny_model(x[:, i:i + 1], cache=cache) for i in range(7, 12)]
    got = torch.cat([part1] + steps, dim=1)
    torch.testing.assert_close(got, full, rtol=1e-5, atol=1e-5)


def test_top_k_keeps_k_tokens():
    logits = torch.tensor([[1.0, 5.0, 3.0, 4.0, 2.0]])
    out = filter_logits(logits, temperature=1.0, top_k=2)
    assert torch.isfinite(out).sum() == 2
    assert torch.isfinite(out[0, 1]) and torch.isfinite(out[0, 3])


def test_top_p_keeps_smallest_set_reaching_p():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    out = filter_logits(probs.log(), temperature=1.0, top_p=0.7)
    kept = torch.isfinite(out)[0].tolist()
    assert kept == [True, True, False, False]  # 0.5 < 0.7, 0.5 + 0.3 >= 0.7


def test_padded_vocab_never_sampled(tiny_model):
    # vocab 40 is padded to 64 rows; the forward's logits carry all 64 columns.
    logits = tiny_model(torch.zeros(1, 4, dtype=torch.long))
    assert tiny_model.padded_vocab == 64 and logits.shape[-1] == 64
    with torch.no_grad():  # make the padding columns win every argmax if they were sampled
        tiny_model.lm_head.weight[40:] = 10.0
    out = generate(tiny_model, torch.zeros(1, 1, dtype=torch.long), 50, temperature=2.0,
                   generator=torch.Generator().manual_seed(0))
    assert int(out.max()) < 40
