"""GPU check: the compiled chunked linear+cross-entropy against the compiled plain loss.

Same weights, same batch, bf16 autocast: loss and every parameter gradient compared by
relative norm error, for ordinary and for large (scaled-up) logits. Prints one JSON line.
    python benchmarks/check_ce_gpu.py [--n_layer 2]
"""
import argparse
import copy
import json

import torch

from gptlab.model import GPT, GPTShape


def grads(model, x, y):
    model.zero_grad(set_to_none=True)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = model(x, y)[1]
    loss.backward()
    return loss.detach().float(), {n.replace("_orig_mod.", ""): p.grad.detach().float().clone()
                                   for n, p in model.named_parameters()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n_layer", type=int, default=2)
    ap.add_argument("--batch", type=int, default=16)
    a = ap.parse_args()
    torch.manual_seed(0)
    shape = GPTShape(n_layer=a.n_layer, n_head=12, n_embd=768, head_dim=64, mlp_dim=3072, block_size=1024,
                     vocab_size=50257, padded_vocab=50304)
    plain = GPT(shape).cuda()
    chunked = copy.deepcopy(plain)
    chunked.ce_chunk_tokens = 8192
    cp, cc = torch.compile(plain), torch.compile(chunked)
    out = {}
    for scale in (1.0, 8.0):  # 8x: logits 8x larger, a sharper softmax
        with torch.no_grad():
            for m in (plain, chunked):
                m.lm_head.weight.mul_(scale)
        x = torch.randint(0, 50257, (a.batch, 1024), device="cuda")
        y = torch.randint(0, 50257, (a.batch, 1024), device="cuda")
        y[0, :100] = -1
        lp, gp = grads(cp, x, y)
        lc, gc = grads(cc, x, y)
        rel = {n: ((gc[n] - gp[n]).norm() / gp[n].norm().clamp_min(1e-30)).item() for n in gp}
        worst = max(rel, key=rel.get)
        out[f"scale{scale:g}"] = {"loss_plain": lp.item(), "loss_chunked": lc.item(),
                                  "loss_rel": abs(lc.item() - lp.item()) / lp.item(),
                                  "grad_rel_max": rel[worst], "grad_rel_max_param": worst,
                                  "grad_rel_embedding": rel["transformer.wte.weight"],
                                  "grad_rel_median": sorted(rel.values())[len(rel) // 2]}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
