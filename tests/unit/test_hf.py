"""GPT-2 import/export against transformers' own GPT2LMHeadModel (tiny, random, CPU)."""

from __future__ import annotations

import json

import pytest
import torch
from tolerances import assert_logits_close  # tests/ is on sys.path under pytest

transformers = pytest.importorskip("transformers", reason="transformers is not installed (pip install gptlab[hf])")
pytest.importorskip("safetensors", reason="safetensors is not installed (pip install gptlab[hf])")
from safetensors.torch import load_file, save_file  # noqa: E402
from transformers import GPT2Config, GPT2LMHeadModel  # noqa: E402

from gptlab import hf, hf_export  # noqa: E402
from gptlab.config import PRESETS, Config, ModelConfig  # noqa: E402
from gptlab.errors import UserError  # noqa: E402
from gptlab.loss import logits_and_loss  # noqa: E402
from gptlab.model import GPT  # noqa: E402

TINY = dict(n_layer=2, n_head=4, n_embd=64, vocab_size=100, n_positions=32)


def _hf_model(seed: int = 0, **kw) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    # Explicit token ids: GPT2Config's defaults (50256) lie outside a 100-token vocab.
    cfg = GPT2Config(**dict(TINY, bos_token_id=0, eos_token_id=0, **kw))
    m = GPT2LMHeadModel(cfg).eval()
    # Random init gives zero biases and unit LayerNorms; perturb them so a missed or
    # transposed tensor cannot hide behind an identity.
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.endswith("bias") or "ln_" in name:
                p.add_(0.1 * torch.randn_like(p))
    return m


def _ids(T: int = 32, vocab: int = 100, batch: int = 2, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (batch, T), generator=g)


def _hf_logits(m: GPT2LMHeadModel, idx: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return m(idx).logits


def _our_logits(m: GPT, idx: torch.Tensor) -> torch.Tensor:
    m.eval()
    with torch.no_grad():
        return logits_and_loss(m, idx)[0]


def _greedy_ours(m: GPT, idx: torch.Tensor, n: int) -> torch.Tensor:
    with torch.no_grad():
        for _ in range(n):
            nxt = logits_and_loss(m, idx)[0][:, -1].argmax(-1, keepdim=True)
            idx = torch.cat([idx, nxt], dim=1)
    return idx


def _old_style_state(m: GPT2LMHeadModel) -> dict[str, torch.Tensor]:
    """Keys as OpenAI's upload has them: no `transformer.` prefix, mask buffers included."""
    sd = {k.removeprefix("transformer."): v.clone() for k, v in m.state_dict().items() if k != "lm_head.weight"}
    n = m.config.n_positions
    for i in range(m.config.n_layer):
        sd[f"h.{i}.attn.bias"] = torch.tril(torch.ones(n, n)).view(1, 1, n, n)
        sd[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    return sd


class NotATensor:  # any class: weights_only must refuse to rebuild it
    pass


# ---------------------------------------------------------------------------- import

def test_import_save_pretrained_matches_logits(tmp_path):
    ref = _hf_model()
    ref.save_pretrained(tmp_path / "m")
    assert (tmp_path / "m" / "model.safetensors").is_file()
    ours = hf.gpt_from_pretrained(str(tmp_path / "m"))
    assert ours.config.vocab_size == 100 and ours.padded_vocab == 128
    # Padded rows are zero and tied.
    assert ours.transformer.wte.weight[100:].abs().max() == 0
    assert ours.lm_head.weight is ours.transformer.wte.weight
    idx = _ids()
    assert_logits_close(_our_logits(ours, idx), _hf_logits(ref, idx))


@pytest.mark.parametrize("fmt", ["model.safetensors", "pytorch_model.bin"])
def test_import_without_transformer_prefix_and_mask_buffers(tmp_path, fmt):
    """Old-style state (no `transformer.` prefix, attention mask buffers), as safetensors or a weights-only .bin."""
    ref = _hf_model(seed=3)
    d = tmp_path / "old"
    d.mkdir()
    ref.config.to_json_file(str(d / "config.json"))
    if fmt == "model.safetensors":
        save_file(_old_style_state(ref), str(d / fmt), metadata={"format": "pt"})
    else:
        torch.save(_old_style_state(ref), d / fmt)
    idx = _ids(seed=4)
    ours = hf.gpt_from_pretrained(str(d))
    assert_logits_close(_our_logits(ours, idx), _hf_logits(ref, idx))


def test_bin_with_arbitrary_objects_is_refused(tmp_path):
    ref = _hf_model()
    d = tmp_path / "evil"
    d.mkdir()
    ref.config.to_json_file(str(d / "config.json"))
    torch.save({"h.0.ln_1.weight": NotATensor()}, d / "pytorch_model.bin")
    with pytest.raises(UserError, match="unpickled"):
        hf.gpt_from_pretrained(str(d))


def test_sharded_safetensors(tmp_path):
    ref = _hf_model(seed=7)
    d = tmp_path / "sharded"
    d.mkdir()
    ref.config.to_json_file(str(d / "config.json"))
    sd = {k: v.clone() for k, v in ref.state_dict().items() if k != "lm_head.weight"}
    keys = sorted(sd)
    halves = {"model-00001-of-00002.safetensors": keys[: len(keys) // 2],
              "model-00002-of-00002.safetensors": keys[len(keys) // 2:]}
    for f, ks in halves.items():
        save_file({k: sd[k] for k in ks}, str(d / f), metadata={"format": "pt"})
    (d / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {k: f for f, ks in halves.items() for k in ks}}))
    idx = _ids()
    assert_logits_close(_our_logits(hf.gpt_from_pretrained(str(d)), idx), _hf_logits(ref, idx))


def test_import_n_inner_and_untied_head(tmp_path):
    # GPT2Config can carry a non-4x MLP and an untied head; gptlab expresses both.
    ref = _hf_model(seed=8, n_inner=96, tie_word_embeddings=False)
    with torch.no_grad():
        ref.lm_head.weight.copy_(torch.randn_like(ref.lm_head.weight) * 0.02)
    ref.save_pretrained(tmp_path / "m")
    ours = hf.gpt_from_pretrained(str(tmp_path / "m"))
    assert ours.config.mlp_dim == 96 and not ours.config.tie_embeddings
    idx = _ids()
    assert_logits_close(_our_logits(ours, idx), _hf_logits(ref, idx))


def test_block_size_crop_keeps_logits(tmp_path):
    ref = _hf_model(seed=9)
    ref.save_pretrained(tmp_path / "m")
    full = hf.gpt_from_pretrained(str(tmp_path / "m"))
    short = hf.gpt_from_pretrained(str(tmp_path / "m"), block_size=16)
    assert short.config.block_size == 16 and short.transformer.wpe.weight.shape == (16, 64)
    idx = _ids(T=16)
    torch.testing.assert_close(_our_logits(short, idx), _our_logits(full, idx), atol=1e-6, rtol=0)
    with pytest.raises(ValueError):
        short(_ids(T=17))
    with pytest.raises(UserError, match="block_size"):
        hf.gpt_from_pretrained(str(tmp_path / "m"), block_size=64)


def test_shard_index_naming_files_outside_its_folder_is_refused(tmp_path):
    ref = _hf_model()
    ref.save_pretrained(tmp_path / "m")
    d = tmp_path / "m"
    (d / "model.safetensors").rename(d / "model-00001-of-00001.safetensors")
    for bad in ("../../etc/passwd", "/etc/passwd", "sub/model.safetensors"):
        index = {"metadata": {}, "weight_map": {"transformer.wte.weight": bad,
                                                "transformer.wpe.weight": "model-00001-of-00001.safetensors"}}
        (d / "model.safetensors.index.json").write_text(json.dumps(index))
        with pytest.raises(UserError, match="outside its folder"):
            hf.read_weights(d)
    index["weight_map"] = {"transformer.wte.weight": "model-00001-of-00001.safetensors"}
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    assert "transformer.wte.weight" in hf.read_weights(d)  # a proper index still loads


def test_gelu_exact_and_other_models_refused(tmp_path):
    ref = _hf_model()
    ref.save_pretrained(tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    for key, value, match in (("activation_function", "relu", "activation_function"),
                              ("model_type", "llama", "model_type"),
                              ("layer_norm_epsilon", 1e-6, "layer_norm_epsilon"),
                              ("scale_attn_by_inverse_layer_idx", True, "scale_attn_by_inverse_layer_idx")):
        bad = dict(cfg, **{key: value})
        (tmp_path / "m" / "config.json").write_text(json.dumps(bad))
        with pytest.raises(UserError, match=match):
            hf.gpt_from_pretrained(str(tmp_path / "m"))
    # Tensors not matching the config are a clear error too.
    cfg2 = dict(cfg, n_embd=32)
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg2))
    with pytest.raises(UserError, match="do not belong together"):
        hf.gpt_from_pretrained(str(tmp_path / "m"))


def test_missing_tensor_named(tmp_path):
    ref = _hf_model()
    ref.save_pretrained(tmp_path / "m")
    sd = load_file(str(tmp_path / "m" / "model.safetensors"))
    del sd["transformer.h.1.mlp.c_fc.bias"]
    save_file(sd, str(tmp_path / "m" / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(UserError, match=r"h\.1\.mlp\.c_fc\.bias"):
        hf.gpt_from_pretrained(str(tmp_path / "m"))


def test_resolution_cache_and_errors(tmp_path, monkeypatch):
    ref = _hf_model()
    # A hub-cache snapshot, laid out as huggingface_hub writes it, found offline.
    base = tmp_path / "hub" / "models--openai-community--gpt2"
    snap = base / "snapshots" / "abc123"
    ref.save_pretrained(snap)
    (base / "refs").mkdir(parents=True)
    (base / "refs" / "main").write_text("abc123")
    assert hf.resolve_pretrained("gpt2", cache_dir=tmp_path / "hub") == snap
    model = hf.gpt_from_pretrained("gpt2", cache_dir=tmp_path / "hub")
    assert model.config.n_layer == 2
    # Legacy cache id (models--gpt2-medium) without refs/main still counts.
    legacy = tmp_path / "hub" / "models--gpt2-medium" / "snapshots" / "def"
    ref.save_pretrained(legacy)
    assert hf.find_in_cache("gpt2-medium", tmp_path / "hub") == legacy
    # Not cached and offline: a UserError saying what to do, no network attempt.
    monkeypatch.setenv("GPTLAB_OFFLINE", "1")
    with pytest.raises(UserError, match="hf download openai-community/gpt2-large"):
        hf.resolve_pretrained("gpt2-large", cache_dir=tmp_path / "hub")
    with pytest.raises(UserError, match="neither a folder"):
        hf.resolve_pretrained(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no config.json"):
        hf.resolve_pretrained(str(tmp_path / "empty"))


# ---------------------------------------------------------------------------- export

def _our_model(seed: int = 0, vocab: int = 100, **kw) -> GPT:
    m = ModelConfig(n_layer=2, n_head=4, n_embd=64, block_size=32, vocab_size=vocab)
    for k, v in kw.items():
        setattr(m, k, v)
    torch.manual_seed(seed)
    model = GPT(m)
    with torch.no_grad():  # non-trivial biases and norms, as after training
        for name, p in model.named_parameters():
            if name.endswith("bias") or "ln_" in name:
                p.add_(0.1 * torch.randn_like(p))
            if name == "transformer.wte.weight":
                p.mul_(20)  # sharper logits: greedy decoding far from argmax ties
    return model.eval()


def test_export_loads_in_transformers_same_logits_and_generation(tmp_path):
    ours = _our_model()
    assert ours.padded_vocab == 128
    res = hf.export_hf(ours, tmp_path / "out")
    assert {"config.json", "model.safetensors"} <= set(res["files"])
    cfg = json.loads((tmp_path / "out" / "config.json").read_text())
    assert cfg["vocab_size"] == 100 and cfg["n_positions"] == 32 and cfg["activation_function"] == "gelu_new"
    assert cfg["architectures"] == ["GPT2LMHeadModel"] and cfg["model_type"] == "gpt2"
    theirs, info = GPT2LMHeadModel.from_pretrained(str(tmp_path / "out"), output_loading_info=True)
    theirs.eval()
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info.get("mismatched_keys")
    assert theirs.lm_head.weight.shape == (100, 64)
    idx = _ids(T=20)
    assert_logits_close(_hf_logits(theirs, idx), _our_logits(ours, idx))

    prompt = idx[:, :8]
    mine = _greedy_ours(ours, prompt, 10)
    with torch.no_grad():
        gen = theirs.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False,
                              max_new_tokens=10, min_new_tokens=10, pad_token_id=0)
    assert gen.shape == (2, 18)
    assert torch.equal(gen, mine)


def test_export_roundtrip_through_import(tmp_path):
    ours = _our_model(seed=2, vocab=130)
    hf.export_hf(ours, tmp_path / "out")
    back = hf.gpt_from_pretrained(str(tmp_path / "out"))
    got = back.state_dict()
    for k, v in ours.state_dict().items():
        if k in ("transformer.wte.weight", "lm_head.weight"):
            # Random init filled the padded rows; the export trims them, the import zeros them.
            assert got[k][130:].abs().max() == 0
            v, got[k] = v[:130], got[k][:130]
        torch.testing.assert_close(got[k], v, atol=0, rtol=0, msg=k)


LANGUINI_KEYS = ("tie_embeddings", "embed_scale", "qkv", "gelu", "bias", "scaled_init", "mlp_dim")


def _mini_shaped(seed: int = 5, **kw) -> GPT:
    """Languini `mini`'s recipe at toy size: untied, scaled embedding, separate Q/K/V, and heads
    narrower than the residual stream (4 x 8 = 32 != 64), as mini's 8 x 32 != 512."""
    recipe = {k: PRESETS["mini"][k] for k in LANGUINI_KEYS if k in PRESETS["mini"]}
    return _our_model(seed=seed, **{**recipe, "mlp_dim": 96, "head_dim": 8, **kw})


def _quiet_load(load, capfd):
    """Call load() and fail on any Python warning or transformers log line it causes."""
    import logging
    import warnings

    records = []
    handler = logging.Handler(level=logging.WARNING)
    handler.emit = records.append
    logger = logging.getLogger("transformers")
    logger.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = load()
    finally:
        logger.removeHandler(handler)
    assert not [str(w.message) for w in caught] and not [r.getMessage() for r in records]
    assert "warn" not in capfd.readouterr().err.lower()
    return result


NANOGPT_RECIPES = {  # nanoGPT's train.py default (bias=False, nn.GELU()), and what GPT-2 can still hold
    "nanogpt_defaults": dict(bias=False, gelu="exact"),
    "separate_qkv": dict(qkv="separate", bias=False),
    "untied_scaled_embedding": dict(tie_embeddings=False, embed_scale=True, gelu="exact"),
}


@pytest.mark.parametrize("recipe", list(NANOGPT_RECIPES))
def test_export_every_recipe_gpt2_holds(tmp_path, recipe, capfd):
    ours = _our_model(seed=6, **NANOGPT_RECIPES[recipe])
    res = hf.export_hf(ours, tmp_path / "out")
    assert "modeling_gptlab.py" not in res["files"]
    cfg = json.loads((tmp_path / "out" / "config.json").read_text())
    assert cfg["activation_function"] == ("gelu" if ours.config.gelu == "exact" else "gelu_new")
    assert cfg["tie_word_embeddings"] == ours.config.tie_embeddings
    theirs, info = _quiet_load(lambda: GPT2LMHeadModel.from_pretrained(
        str(tmp_path / "out"), output_loading_info=True), capfd)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info.get("mismatched_keys")
    if not ours.config.bias:
        assert theirs.transformer.h[0].mlp.c_fc.bias.abs().max() == 0
    idx = _ids(T=20)
    assert_logits_close(_hf_logits(theirs.eval(), idx), _our_logits(ours, idx))
    back = hf.gpt_from_pretrained(str(tmp_path / "out"))  # and back into gptlab, exact GELU included
    assert back.config.gelu == ours.config.gelu
    assert_logits_close(_our_logits(back, idx), _our_logits(ours, idx))


def test_export_languini_mini_as_remote_code(tmp_path, capfd):
    ours = _mini_shaped()
    assert hf.gpt2_gaps(ours.config)
    res = hf.export_hf(ours, tmp_path / "mini")
    assert {"modeling_gptlab.py", "configuration_gptlab.py", "model.safetensors"} <= set(res["files"])
    assert "trust_remote_code=True" in res["notes"][0]
    theirs = _quiet_load(lambda: transformers.AutoModelForCausalLM.from_pretrained(
        str(tmp_path / "mini"), trust_remote_code=True), capfd).eval()
    assert theirs.lm_head.weight.shape == (100, 64)
    idx = _ids(T=20)
    with torch.no_grad():
        out = _quiet_load(lambda: theirs(idx, labels=idx), capfd)
    assert_logits_close(out.logits, _our_logits(ours, idx))
    # transformers' next-token loss convention against gptlab's own loss on the same targets
    with torch.no_grad():
        want = logits_and_loss(ours, idx[:, :-1], idx[:, 1:])[1]
    torch.testing.assert_close(out.loss, want, atol=1e-5, rtol=1e-5)
    prompt = idx[:, :8]
    with torch.no_grad():
        gen = theirs.generate(prompt, do_sample=False, max_new_tokens=6, min_new_tokens=6, pad_token_id=0)
    assert torch.equal(gen, _greedy_ours(ours, prompt, 6))


def test_remote_code_folder_needs_no_gptlab(tmp_path):
    """The folder loads where gptlab cannot be imported: its modeling file is self-contained."""
    import subprocess
    import sys

    ours = _mini_shaped(seed=11, tie_embeddings=True, qkv="fused", gelu="exact", bias=False)
    hf.export_hf(ours, tmp_path / "alone")
    idx = _ids(T=16)
    torch.save(idx, tmp_path / "idx.pt")
    script = ("import sys; sys.modules['gptlab'] = None\n"  # any `import gptlab` now fails
              "import torch, transformers\n"
              f"m = transformers.AutoModelForCausalLM.from_pretrained({str(tmp_path / 'alone')!r}, "
              "trust_remote_code=True).eval()\n"
              f"idx = torch.load({str(tmp_path / 'idx.pt')!r}, weights_only=True)\n"
              f"with torch.no_grad(): torch.save(m(idx).logits, {str(tmp_path / 'logits.pt')!r})\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    got = torch.load(tmp_path / "logits.pt", weights_only=True)
    assert_logits_close(got, _our_logits(ours, idx))


def test_export_replaces_only_an_earlier_export(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    # Someone else's folder is never written into, --overwrite or not.
    for kw in ({}, {"overwrite": True}):
        with pytest.raises(UserError, match="holds no earlier gptlab export"):
            hf.export_hf(_our_model(), out, **kw)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    hf.export_hf(_our_model(), tmp_path / "exp")
    with pytest.raises(UserError, match="--overwrite"):
        hf.export_hf(_our_model(), tmp_path / "exp")
    (tmp_path / "exp" / "vocab.json").write_text("{}")  # stale file of an earlier export
    hf.export_hf(_our_model(), tmp_path / "exp", overwrite=True)
    assert not (tmp_path / "exp" / "vocab.json").exists() and (tmp_path / "exp" / hf.EXPORT_MARKER).is_file()
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="not a folder"):
        hf.export_hf(_our_model(), tmp_path / "file")


def test_export_tokenizer_notes(tmp_path):
    res = hf.export_hf(_our_model(), tmp_path / "a", {"tokenizer": {"kind": "char", "chars": list("ab")}})
    assert any("'char'" in n for n in res["notes"]) and "vocab.json" not in res["files"]
    res = hf.export_hf(_our_model(), tmp_path / "b", {"kind": "gpt2"})
    assert any("50257" in n for n in res["notes"])  # vocab 100 is not GPT-2 BPE


def test_tokenizer_files_from_ranks_synthetic():
    # Bytes, then "ab", "abc", "bc", "abcbc": the last is made from "abc"+"bc", which
    # plain left-to-right pairing would miss.
    ranks = {bytes([b]): b for b in range(256)}
    for i, tok in enumerate((b"ab", b"abc", b"bc", b"abcbc", b" a")):
        ranks[tok] = 256 + i
    vocab, merges = hf.gpt2_tokenizer_files(ranks)
    assert merges.splitlines() == ["#version: 0.2", "a b", "ab c", "b c", "abc bc", "Ġ a"]
    assert vocab["Ġa"] == 260 and vocab["a"] == ord("a") and len(vocab) == 261
    with pytest.raises(ValueError):
        hf.gpt2_tokenizer_files({bytes([b]): b for b in range(256)} | {b"xyz": 256})


def test_export_gpt2_tokenizer_files_work_in_transformers(tmp_path):
    from gptlab.data import tokenizers as toks

    try:
        toks.find_gpt2_ranks(allow_fetch=False)
    except UserError:
        pytest.skip("GPT-2 vocabulary not available offline (pip install --no-deps openai-whisper)")
    model = _our_model(vocab=50257, n_layer=1)
    res = hf.export_hf(model, tmp_path / "out", {"tokenizer": {"kind": "gpt2"}, "eot_id": 50256})
    assert {"vocab.json", "merges.txt", "tokenizer_config.json"} <= set(res["files"])
    assert json.loads((tmp_path / "out" / "config.json").read_text())["eos_token_id"] == 50256
    merges = (tmp_path / "out" / "merges.txt").read_bytes()
    assert toks.sha256_bytes(merges) == toks.GPT2_VOCAB_BPE_SHA256  # byte-identical to OpenAI's vocab.bpe
    tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "out"))
    text = "Hello world!  It's 2024 — naïve café, ünïcode 🙂\n\tend"
    assert tok(text)["input_ids"] == toks.GPT2Tokenizer().encode(text)
    assert tok.eos_token_id == 50256


def test_main_export_from_run_folder(tmp_path, monkeypatch, capsys):
    from gptlab import checkpoint as ck

    model = _our_model(seed=4)
    run = tmp_path / "run"
    run.mkdir()
    cfg = Config()
    for k, v in dict(n_layer=2, n_head=4, n_embd=64, block_size=32, vocab_size=100).items():
        cfg.set(k, v)
    (run / "config.json").write_text(cfg.to_json())
    # The run's own copy of the data meta names the tokenizer (the dataset may be gone).
    (run / "data_meta.json").write_text(json.dumps({"tokenizer": {"kind": "char", "chars": ["a"]}}))
    # Compiled models save keys with _orig_mod.; export must not care.
    state = {"_orig_mod." + k: v for k, v in model.state_dict().items()}
    ck.save_checkpoint(run, {"model": state}, step=10, is_best=True)
    assert hf.main_export([str(run), "--to", "hf", str(tmp_path / "out"), "--checkpoint", "best"]) == 0
    out = capsys.readouterr().out
    assert "exported" in out and "'char'" in out and "data_meta.json" in out
    assert json.loads((tmp_path / "out" / "data_meta.json").read_text())["tokenizer"]["kind"] == "char"
    theirs = GPT2LMHeadModel.from_pretrained(str(tmp_path / "out")).eval()
    idx = _ids(T=12)
    assert_logits_close(_hf_logits(theirs, idx), _our_logits(model, idx))
    with pytest.raises(UserError, match="--overwrite"):
        hf.main_export([str(run), "--to", "hf", str(tmp_path / "out")])
    assert hf.main_export([str(run), "--to", "hf", str(tmp_path / "out"), "--overwrite", "--checkpoint", "last"]) == 0
    with pytest.raises(UserError, match="--to hf"):
        hf.main_export([str(run), "--to", "onnx", str(tmp_path / "o2")])
    with pytest.raises(UserError, match="required"):
        hf.main_export([str(run)])
    # The run's own folder is never an export target.
    (run / "keep.txt").write_text("x")
    for target in (run, tmp_path / "run" / "."):
        with pytest.raises(UserError, match="run folder itself"):
            hf.main_export([str(run), "--to", "hf", str(target), "--overwrite"])
    assert (run / "config.json").is_file() and (run / "keep.txt").read_text() == "x"


def test_main_export_of_a_languini_run(tmp_path):
    from gptlab import checkpoint as ck

    model = _mini_shaped(seed=12)
    cfg = Config()
    for k, v in PRESETS["mini"].items():
        cfg.set(k, v)
    for k, v in dict(n_layer=2, n_head=4, n_embd=64, head_dim=8, mlp_dim=96, block_size=32, vocab_size=100).items():
        cfg.set(k, v)
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(cfg.to_json())
    ck.save_checkpoint(run, {"model": model.state_dict()}, step=10, is_best=True)
    assert hf.main_export([str(run), "--to", "hf", str(tmp_path / "out")]) == 0
    theirs = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "out"), trust_remote_code=True)
    idx = _ids(T=32)
    assert_logits_close(_hf_logits(theirs.eval(), idx), _our_logits(model, idx))


def test_export_copies_the_runs_own_tokenizer_files(tmp_path):
    import types

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "tok.model").write_bytes(b"sentencepiece model bytes")
    meta = {"tokenizer": {"kind": "sentencepiece", "model_file": "tok.model"}, "vocab_size": 100}
    out = tmp_path / "out"
    out.mkdir()
    notes = hf_export._copy_run_tokenizer(types.SimpleNamespace(dir=run_dir, data_meta=meta), out)
    assert (out / "tok.model").read_bytes() == b"sentencepiece model bytes"
    assert json.loads((out / "data_meta.json").read_text()) == meta and "tok.model" in notes[0]
    gpt2 = types.SimpleNamespace(dir=run_dir, data_meta={"tokenizer": {"kind": "gpt2"}})
    # GPT-2 BPE travels as vocab.json/merges.txt
    assert hf_export._copy_run_tokenizer(gpt2, tmp_path / "none") == []
