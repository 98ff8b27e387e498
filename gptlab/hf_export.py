"""GPT-2 weights out: `gptlab export --to hf` writes a run as a folder transformers loads: config.json,
model.safetensors in GPT2LMHeadModel's layout (Conv1D weights transposed back, vocabulary rows trimmed)
or, for a shape GPT-2 cannot hold, gptlab's own modeling code, and the tokenizer's files."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import torch

from gptlab.args import ArgParser
from gptlab.config import ModelConfig, is_builtin
from gptlab.data.tokenizers import GPT2_INSTALL_HINT, find_gpt2_ranks, tokenizer_files
from gptlab.errors import UserError
from gptlab.files import (
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    check_name,
    check_output_folder,
    check_writable_folder,
    read_json,
    write_error,
)
from gptlab.hf_import import _LN_EPS, CONV1D_SUFFIXES, WEIGHT_FILES, _safetensors
from gptlab.hf_remote import write_remote_model
from gptlab.runs import load_run

_NORM_WEIGHTS = ("ln_1.weight", "ln_2.weight", "ln_f.weight")
# Files an export may hold; --overwrite removes them first so no stale one survives.
_EXPORT_FILES = WEIGHT_FILES + ("config.json", "generation_config.json", "vocab.json", "merges.txt",
                                "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                                "data_meta.json", "configuration_gptlab.py", "modeling_gptlab.py")
ENDOFTEXT = "<|endoftext|>"
# Written last by every export: the mark that lets a later --overwrite replace the folder.
EXPORT_MARKER = "gptlab_export.json"
EXPORT_FORMAT = "gptlab-hf-export-1"


def gpt2_gaps(s: ModelConfig) -> list[str]:
    """What GPT2LMHeadModel cannot hold of this shape (empty: it holds the model exactly). Missing
    biases become zero biases, separate Q/K/V one fused matrix, the exact GELU "gelu", and an untied
    head a saved lm_head; the embedding scale folds into an untied token embedding."""
    return [msg for bad, msg in (
        (s.embed_scale and s.tie_embeddings, "embed_scale with a tied output layer"),
        (s.n_head * s.head_dim != s.n_embd,
         f"n_head x head_dim = {s.n_head * s.head_dim} != n_embd {s.n_embd}"),
    ) if bad]


def gpt2_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's weights in GPT2LMHeadModel's layout: real vocabulary rows, Conv1D (in, out)
    matrices, fused Q/K/V, zero biases where the model has none, the embedding scale folded in."""
    s = model.config
    state = {n: t.detach().cpu() for n, t in model.state_dict().items()}
    out: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        if name.endswith((".q_proj.weight", ".q_proj.bias")):
            stem, kind = name.rsplit(".q_proj.", 1)
            tensor = torch.cat([state[f"{stem}.{p}.{kind}"] for p in ("q_proj", "k_proj", "v_proj")])
            name = f"{stem}.c_attn.{kind}"
        elif name.endswith((".k_proj.weight", ".k_proj.bias", ".v_proj.weight", ".v_proj.bias")):
            continue
        out[name] = tensor
    if not s.bias:  # GPT-2's Linear and LayerNorm layers all carry a bias: zero is the same function
        for name in [n for n in out if n.endswith(CONV1D_SUFFIXES + _NORM_WEIGHTS)]:
            out[name.removesuffix("weight") + "bias"] = out[name].new_zeros(out[name].shape[0])
    out["transformer.wte.weight"] = out["transformer.wte.weight"][:s.vocab_size]
    if s.tie_embeddings:
        del out["lm_head.weight"]  # the same data as wte: save_pretrained leaves it out too
    else:
        out["lm_head.weight"] = out["lm_head.weight"][:s.vocab_size]
        if s.embed_scale:  # wte(idx) * c == (c * wte)(idx), element by element in the weights' dtype
            out["transformer.wte.weight"] = out["transformer.wte.weight"] * model.embed_multiplier
    return {n: (t.t() if n.endswith(CONV1D_SUFFIXES) else t).contiguous() for n, t in out.items()}


def _tokenizer_kind(tokenizer_meta: dict | None) -> tuple[str | None, int | None]:
    """(kind, eot id) from a tokenizer's to_meta() dict or a whole data meta.json."""
    if not tokenizer_meta:
        return None, None
    nested = isinstance(tokenizer_meta.get("tokenizer"), dict)
    tok = tokenizer_meta.get("tokenizer") if nested else tokenizer_meta
    eot = tokenizer_meta.get("eot_id", tok.get("eot_id"))
    return tok.get("kind"), (eot if isinstance(eot, int)
                             else (50256 if tok.get("kind") == "gpt2" else None))


def gpt2_tokenizer_files(ranks: dict[bytes, int]) -> tuple[dict[str, int], str]:
    """(vocab.json mapping, merges.txt text) from tiktoken-style merge ranks: BPE on a token's
    bytes with only the merges ranked before it leaves the two halves its own merge joins."""
    # GPT-2's byte -> printable character map: printable Latin-1 bytes stand for themselves,
    # the other 68 move to code points 256.. in byte order.
    keep = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    moved = (b for b in range(256) if b not in keep)
    b2u = {**{b: chr(b) for b in keep}, **{b: chr(256 + i) for i, b in enumerate(moved)}}

    def uni(b: bytes) -> str:
        return "".join(b2u[x] for x in b)

    vocab = {uni(tok): r for tok, r in ranks.items()}
    merges = []
    for tok, r in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(tok) < 2:
            continue
        parts = [bytes([x]) for x in tok]
        while len(parts) > 2:
            # the earliest-ranked merge made before this token's own (first position on ties)
            best, at = min((ranks.get(a + b, r), i) for i, (a, b) in enumerate(zip(parts, parts[1:])))
            if best >= r:
                break
            parts[at:at + 2] = [parts[at] + parts[at + 1]]
        if len(parts) != 2:
            raise ValueError(f"token rank {r} is not reachable by one merge: not a BPE rank table")
        merges.append(f"{uni(parts[0])} {uni(parts[1])}")
    return vocab, "#version: 0.2\n" + "\n".join(merges) + "\n"


def _write_gpt2_tokenizer(out: Path, vocab_size: int, block_size: int) -> list[str]:
    """Write vocab.json/merges.txt/tokenizer_config.json; returns notes (why skipped)."""
    if vocab_size != 50257:
        return [f"tokenizer files skipped: the model has {vocab_size} tokens, GPT-2 BPE has 50257"]
    try:  # no fetch here: an export should not reach for the network behind the user's back
        ranks, where = find_gpt2_ranks(allow_fetch=False)
    except UserError:
        return [f"tokenizer files skipped: {GPT2_INSTALL_HINT}, then export again"]
    vocab, merges = gpt2_tokenizer_files(ranks)
    vocab[ENDOFTEXT] = 50256
    atomic_write_text(out / "vocab.json", json.dumps(vocab, ensure_ascii=False))
    atomic_write_text(out / "merges.txt", merges)
    atomic_write_json(out / "tokenizer_config.json", {
        "tokenizer_class": "GPT2Tokenizer", "model_max_length": block_size, "add_prefix_space": False,
        "bos_token": ENDOFTEXT, "eos_token": ENDOFTEXT, "unk_token": ENDOFTEXT})
    return [f"tokenizer: GPT-2 BPE from {where}"]


def export_hf(model: torch.nn.Module, out_dir: str | Path, tokenizer_meta: dict | None = None,
              overwrite: bool = False,
              extra: Callable[[Path], list[str]] | None = None) -> dict[str, Any]:
    """Write config.json + model.safetensors (+ GPT-2 tokenizer files, + extra(folder)'s files) for
    transformers; returns {"dir", "files", "notes"}. The tied lm_head is left out, as save_pretrained
    does. Built in a new folder beside out_dir and swapped in whole: an earlier export is replaced only
    once the new one is complete, and every refusal comes before anything is written."""
    out = Path(out_dir)
    old_files = check_export_target(out, overwrite)
    notes = _swap_in(out, old_files, lambda folder: _write_export(model, folder, tokenizer_meta, extra))
    files = sorted(p.name for p in out.iterdir() if p.is_file())
    return {"dir": str(out), "files": files, "notes": notes}


def _write_export(model: torch.nn.Module, out: Path, tokenizer_meta: dict | None, extra) -> list[str]:
    """The export's files into the (new, empty) folder out; its notes."""
    s = model.config
    kind, eot = _tokenizer_kind(tokenizer_meta)
    eot = eot if eot is not None and eot < s.vocab_size else None
    dtype = str(model.transformer.wte.weight.dtype).removeprefix("torch.")
    common = {"vocab_size": s.vocab_size, "bos_token_id": eot, "eos_token_id": eot,
              "torch_dtype": dtype, "dtype": dtype}  # transformers 4.x reads the first, 5.x the second
    if gaps := gpt2_gaps(s):
        write_remote_model(model, out, common)
        notes = [f"GPT2LMHeadModel cannot hold {'; '.join(gaps)}: written with its own modeling code, "
                 "load with AutoModelForCausalLM.from_pretrained(FOLDER, trust_remote_code=True)"]
    else:
        _write_gpt2_model(model, out, common)
        notes = []
    if kind == "gpt2":
        notes += _write_gpt2_tokenizer(out, s.vocab_size, s.block_size)
    else:
        notes.append(f"tokenizer files skipped: a {kind!r} tokenizer has no GPT-2 equivalent; keep the "
                     "data dir's meta.json beside the export to encode text" if kind else
                     "tokenizer files skipped: the tokenizer is unknown (no meta.json found)")
    notes += extra(out) if extra is not None else []
    written = sorted(p.name for p in out.iterdir())
    atomic_write_json(out / EXPORT_MARKER, {"format": EXPORT_FORMAT, "files": written})
    return notes


def _write_gpt2_model(model: torch.nn.Module, out: Path, common: dict[str, Any]) -> None:
    s = model.config
    # format=pt: transformers checks this metadata to know the tensors are PyTorch-laid-out.
    atomic_write_bytes(out / "model.safetensors",
                       _safetensors().save(gpt2_tensors(model), metadata={"format": "pt"}))
    # GPT2Config's fields (n_positions = block_size, vocab_size = real vocab)
    atomic_write_json(out / "config.json", {
        "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
        "activation_function": "gelu_new" if s.gelu == "tanh" else "gelu",
        "n_layer": s.n_layer, "n_head": s.n_head, "n_embd": s.n_embd,
        "n_inner": None if s.mlp_dim == 4 * s.n_embd else s.mlp_dim,
        "n_positions": s.block_size, "n_ctx": s.block_size,  # n_ctx: what old readers look for
        "layer_norm_epsilon": _LN_EPS, "initializer_range": 0.02,
        "attn_pdrop": s.dropout, "embd_pdrop": s.dropout, "resid_pdrop": s.dropout,
        "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "tie_word_embeddings": s.tie_embeddings, "use_cache": True,
        "loss_type": "ForCausalLM",  # transformers 4.46+ reads it; without it, a loss call warns
        **common,
    })


def check_export_target(out: Path, overwrite: bool) -> list[str]:
    """An export writes a new or empty folder, or replaces an earlier gptlab export there (with
    --overwrite), never a folder holding anything else (a run included): checked before anything is
    written or deleted. Returns the names of the earlier export's files."""
    out = check_output_folder(out, "export folder", "export")
    check_writable_folder(out.absolute().parent, "export folder")  # the new export is built beside out
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} exists and is not a folder: pick another export path")
    entries = sorted(out.iterdir()) if out.is_dir() else []
    if not entries:
        return []
    if not (out / EXPORT_MARKER).is_file():
        raise UserError(f"{out} is not empty and holds no earlier gptlab export: pick a new or empty "
                        "folder")
    if not overwrite:
        raise UserError(f"{out} holds an earlier export: pass --overwrite to replace it, or pick a new "
                        "folder")
    listed = read_json(out / EXPORT_MARKER, "export marker")
    listed = listed.get("files") if isinstance(listed, dict) else None
    named = {f for f in listed or [] if isinstance(f, str) and "/" not in f}
    known = set(_EXPORT_FILES) | {EXPORT_MARKER} | named
    for p in entries:
        if p.name not in known or p.is_symlink() or not p.is_file():
            raise UserError(f"{out} holds {p.name}, which no gptlab export writes, so --overwrite would "
                            f"lose it: move it out of {out} or pick a new folder (nothing was deleted)")
    return [p.name for p in entries]


def _swap_in(out: Path, old_files: list[str], write: Callable[[Path], Any]) -> Any:
    """write(new folder) beside out, then the new folder takes out's place; the earlier export's
    old_files (checked by check_export_target) are deleted only after that. Returns what write
    returned."""
    parent = out.absolute().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        work = parent / f".gptlab-export-{os.getpid()}-{secrets.token_hex(4)}"
        work.mkdir()
    except OSError as e:
        raise write_error(out, e) or UserError(f"cannot create {out}: {e.strerror}") from None
    aside = work.with_name(work.name + "-old")
    try:
        result = write(work)
        if out.exists():
            os.rename(out, aside)
        os.rename(work, out)
    except BaseException as e:
        shutil.rmtree(work, ignore_errors=True)
        if isinstance(e, OSError) and (err := write_error(out, e)) is not None:
            raise err from None
        raise
    if old_files:
        for name in old_files:
            (aside / name).unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            aside.rmdir()
    return result


def main_export(argv: list[str]) -> int:
    ap = ArgParser(prog="gptlab export", description="Export a trained run for another toolkit.")
    ap.add_argument("run", help="run folder (holds config.json and checkpoints/)")
    ap.add_argument("out", help="folder to write: new, empty, or an earlier export (with --overwrite)")
    ap.add_argument("--to", required=True, help="target format: hf (transformers GPT2LMHeadModel)")
    ap.add_argument("--checkpoint", default="best", choices=("best", "last"),
                    help="which checkpoint to export")
    ap.add_argument("--overwrite", action="store_true", help="replace an earlier export in OUT")
    ap.add_argument("--trust_code", action="store_true",
                    help="accepted as by every command that loads runs; a model idea's run is not "
                    "exported")
    a = ap.parse_intermixed_args(argv)
    if a.to != "hf":
        raise UserError(f"export: --to {a.to!r} is not supported: use --to hf")
    run = load_run(a.run, trust_code=a.trust_code)
    if not is_builtin(run.config.model.model):  # refused before anything runs or is read
        raise UserError(f"export: {a.run} was trained with the model idea "
                        f"{run.config.model.model.rsplit(':', 1)[0]}, and the Hugging Face export "
                        "writes gptlab's built-in GPT only: use the run with `gptlab sample/eval --run "
                        "RUN --trust_code`")
    out = check_name(a.out, "export folder")
    if out.resolve() == run.dir.resolve():
        raise UserError(f"export: {out} is the run folder itself: export to a folder of its own, e.g. "
                        f"{out}-hf")
    if not run.config.model.vocab_size:
        raise UserError(f"{a.run}/config.json has no model.vocab_size: the run was never started; train "
                        "it first")
    check_export_target(out, a.overwrite)  # before the checkpoint is read, too
    t0 = time.time()
    print(f"export: reading {run.checkpoint(a.checkpoint)}", flush=True)
    res = export_hf(run.build_model("cpu", a.checkpoint), out, run.data_meta, overwrite=a.overwrite,
                    extra=lambda folder: _copy_run_tokenizer(run, folder))
    print(f"exported {a.run} ({a.checkpoint}) to {res['dir']} in {time.time() - t0:.1f}s: "
          f"{', '.join(res['files'])}")
    for n in res["notes"]:
        print("  " + n)
    return 0


def _copy_run_tokenizer(run, out: Path) -> list[str]:
    """A non-GPT-2 tokenizer travels as gptlab's own files: the run's data_meta.json and
    its tokenizer model, so `tokenizer_from_meta` rebuilds it from the export folder."""
    if run.data_meta is None or _tokenizer_kind(run.data_meta)[0] == "gpt2":
        return []
    atomic_write_json(out / "data_meta.json", run.data_meta)
    copied = ["data_meta.json"] + [f for f in tokenizer_files(run.data_meta) if (run.dir / f).is_file()]
    for f in copied[1:]:
        shutil.copyfile(run.dir / f, out / f)
    return [f"gptlab tokenizer files copied: {', '.join(copied)}"]
