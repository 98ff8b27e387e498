"""Tokenizers: character level, GPT-2 BPE (offline), SentencePiece. Each describes itself as a JSON dict
(`to_meta`, stored in meta.json) from which `tokenizer_from_meta` rebuilds it."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import importlib.util
import os
import re
import subprocess
import sys
import tarfile
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Iterable

import numpy as np

from gptlab.errors import UserError
from gptlab.files import atomic_write_bytes, sha256_file


def cache_dir() -> Path:
    """Where gptlab keeps downloaded resources (GPTLAB_CACHE_DIR overrides)."""
    return Path(os.environ.get("GPTLAB_CACHE_DIR") or Path.home() / ".cache" / "gptlab").expanduser()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _ids_to_list(ids) -> list[int]:
    """Plain ints of a list, numpy array or torch tensor."""
    return [int(i) for i in (ids.tolist() if hasattr(ids, "tolist") else ids)]


# --- Character level ---


class CharTokenizer:
    """One id per distinct character, ids in sorted character order."""

    name = "char"
    eot_id = None

    def __init__(self, chars: Iterable[str]):
        chars = sorted(set(chars))
        if not chars:
            raise UserError("character tokenizer needs a non-empty text: give a file with some text in "
                            "it")
        self.chars, self.vocab_size = chars, len(chars)
        # Sorted code points: encode is one vectorised searchsorted, not a Python loop.
        self._codes = np.array([ord(c) for c in chars], dtype=np.uint32)

    def encode_array(self, text: str) -> np.ndarray:
        codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        idx = np.searchsorted(self._codes, codes)
        idx_c = np.minimum(idx, len(self._codes) - 1)
        bad = self._codes[idx_c] != codes
        if bad.any():
            ch = chr(int(codes[np.argmax(bad)]))
            raise UserError(f"character {ch!r} is not in this character vocabulary: prepare the data "
                            "with a text that contains it")
        return idx.astype(np.int64)

    def encode(self, text: str) -> list[int]:
        return self.encode_array(text).tolist()

    def encode_batch(self, texts: list[str], num_threads: int = 1) -> list[np.ndarray]:
        return [self.encode_array(t) for t in texts]

    def decode(self, ids) -> str:
        return "".join(self.chars[i] for i in _ids_to_list(ids))

    def to_meta(self) -> dict:
        # Each entry is one code point, so the joined table identifies the vocabulary.
        return {"kind": "char", "chars": self.chars,
                "fingerprint": sha256_bytes("".join(self.chars).encode("utf-8"))}


# --- GPT-2 BPE through tiktoken, from local files only ---

# The hashes tiktoken itself checks (tiktoken_ext/openai_public.py): the GPT-2
# release files, and r50k_base which holds the same 50,256 ranks in tiktoken's
# own format.
GPT2_VOCAB_BPE_SHA256 = "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"
GPT2_ENCODER_JSON_SHA256 = "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"
R50K_TIKTOKEN_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"
_GPT2_URLS = {
    "vocab.bpe": "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/vocab.bpe",
    "encoder.json": "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/encoder.json",
    "r50k": "https://openaipublic.blob.core.windows.net/encodings/r50k_base.tiktoken",
}
# Registry packages that ship the GPT-2 vocabulary byte-for-byte.
WHISPER_PYPI = "openai-whisper==20250625"  # whisper/assets/gpt2.tiktoken == r50k_base
GPT2_ENV = "GPTLAB_GPT2_VOCAB"
GPT2_INSTALL_HINT = (
    f"GPT-2 BPE vocabulary not found offline: run `pip install --no-deps {WHISPER_PYPI}` "
    f"(or set {GPT2_ENV} to a folder holding vocab.bpe + encoder.json or gpt2.tiktoken)"
)


def _ranks_from_tiktoken_file(path: Path) -> dict[bytes, int] | None:
    """The ranks of a tiktoken-format file with r50k_base's sha256, else None."""
    data = path.read_bytes()
    if sha256_bytes(data) != R50K_TIKTOKEN_SHA256:
        return None
    return {base64.b64decode(tok): int(rank) for tok, rank in (line.split() for line in data.splitlines()
                                                               if line)}


def _ranks_from_data_gym(vocab_bpe: Path, encoder_json: Path) -> dict[bytes, int] | None:
    if (sha256_file(vocab_bpe) != GPT2_VOCAB_BPE_SHA256
            or sha256_file(encoder_json) != GPT2_ENCODER_JSON_SHA256):
        return None
    from unittest import mock

    from tiktoken.load import data_gym_to_mergeable_bpe_ranks

    # An empty TIKTOKEN_CACHE_DIR stops tiktoken copying our local files into its cache.
    with mock.patch.dict(os.environ, {"TIKTOKEN_CACHE_DIR": ""}):
        return data_gym_to_mergeable_bpe_ranks(str(vocab_bpe), str(encoder_json))


def _ranks_from_dir(folder: Path, tiktoken_names=("gpt2.tiktoken", "r50k_base.tiktoken"),
                    data_gym=("vocab.bpe", "encoder.json")) -> dict[bytes, int] | None:
    """The first verified ranks among folder's tiktoken files, then its (vocab.bpe, encoder.json)
    pair; else None."""
    for name in tiktoken_names:
        r = _ranks_from_tiktoken_file(folder / name) if (folder / name).is_file() else None
        if r is not None:
            return r
    if data_gym and all((folder / f).is_file() for f in data_gym):
        return _ranks_from_data_gym(folder / data_gym[0], folder / data_gym[1])
    return None


def _ranks_from_tiktoken_cache() -> dict[bytes, int] | None:
    # tiktoken names cached files by the sha1 of their URL.
    key = {k: hashlib.sha1(u.encode()).hexdigest() for k, u in _GPT2_URLS.items()}
    dirs = [Path(os.environ[v]) for v in ("TIKTOKEN_CACHE_DIR", "DATA_GYM_CACHE_DIR")
            if os.environ.get(v)]
    for folder in dirs + [Path(tempfile.gettempdir()) / "data-gym-cache"]:
        r = _ranks_from_dir(folder, [key["r50k"]], (key["vocab.bpe"], key["encoder.json"]))
        if r is not None:
            return r
    return None


def _ranks_from_installed_packages() -> dict[bytes, int] | None:
    # find_spec locates whisper without importing it (which would pull in torch and numba).
    with contextlib.suppress(Exception):
        spec = importlib.util.find_spec("whisper")
        for loc in (spec.submodule_search_locations if spec else None) or []:
            if r := _ranks_from_dir(Path(loc) / "assets", ["gpt2.tiktoken"], ()):
                return r
    return None


def fetch_gpt2_vocab_from_registry() -> Path | None:
    """Fetch the GPT-2 vocabulary through PyPI into the gptlab cache: the openai-whisper sdist,
    downloaded without dependencies and never installed, holds it. The folder, or None."""
    dest = cache_dir() / "gpt2"
    with tempfile.TemporaryDirectory() as tmp, contextlib.suppress(subprocess.SubprocessError, OSError,
                                                                   tarfile.TarError):
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                        "--no-build-isolation", "-q", "-d", tmp, WHISPER_PYPI], check=True,
                       capture_output=True, timeout=300)
        for sdist in Path(tmp).glob("*.tar.gz"):
            with tarfile.open(sdist) as tf:
                m = next((m for m in tf.getmembers() if m.isfile()
                          and m.name.endswith("whisper/assets/gpt2.tiktoken")), None)
                data = tf.extractfile(m).read() if m else b""
            if sha256_bytes(data) == R50K_TIKTOKEN_SHA256:
                dest.mkdir(parents=True, exist_ok=True)
                atomic_write_bytes(dest / "gpt2.tiktoken", data)
                print(f"GPT-2 vocabulary: fetched from PyPI package {WHISPER_PYPI} into {dest}")
                return dest
    return None


def find_gpt2_ranks(allow_fetch: bool = True) -> tuple[dict[bytes, int], str]:
    """Locate and verify the GPT-2 merge ranks without touching openaipublic: $GPTLAB_GPT2_VOCAB,
    tiktoken's cache, the gptlab cache, an installed registry package, then (if allowed) a fetch through
    PyPI. Returns (ranks, where they came from)."""
    env = os.environ.get(GPT2_ENV)
    if env:
        p = Path(env).expanduser()
        r = _ranks_from_dir(p) if p.is_dir() else _ranks_from_dir(p.parent, [p.name], ())
        if r is None:
            raise UserError(f"{GPT2_ENV}={env} holds no GPT-2 vocabulary with the known sha256: point "
                            "it at a folder with vocab.bpe + encoder.json (or gpt2.tiktoken), or unset "
                            "it")
        return r, f"${GPT2_ENV} ({p})"
    gdir = cache_dir() / "gpt2"
    for where, find in (("tiktoken cache", _ranks_from_tiktoken_cache), (f"gptlab cache ({gdir})",
                        lambda: _ranks_from_dir(gdir)), ("installed package",
                                                         _ranks_from_installed_packages)):
        r = find()
        if r is not None:
            return r, where
    if allow_fetch and os.environ.get("GPTLAB_OFFLINE") != "1":
        folder = fetch_gpt2_vocab_from_registry()
        r = _ranks_from_dir(folder) if folder is not None else None
        if r is not None:
            return r, f"gptlab cache ({folder})"
    raise UserError(GPT2_INSTALL_HINT)


@lru_cache(maxsize=1)
def gpt2_encoding():
    """The tiktoken Encoding for GPT-2, built from verified local files (cached per process)."""
    import tiktoken
    from tiktoken_ext.openai_public import ENDOFTEXT, r50k_pat_str

    ranks, _ = find_gpt2_ranks(allow_fetch=False)  # never fetch here: `gptlab prepare` does, saying so
    return tiktoken.Encoding(name="gpt2", pat_str=r50k_pat_str, mergeable_ranks=ranks,
                             special_tokens={ENDOFTEXT: 50256}, explicit_n_vocab=50257)


class GPT2Tokenizer:
    """GPT-2 byte-level BPE on ordinary text: a literal "<|endoftext|>" in a document stays text,
    so decode(encode(t)) == t for every string."""

    name = "gpt2"
    vocab_size = 50257
    eot_id = 50256

    def __init__(self):
        self.enc = gpt2_encoding()

    def encode(self, text: str) -> list[int]:
        return self.enc.encode_ordinary(text)

    def encode_batch(self, texts: list[str], num_threads: int = 8) -> list[list[int]]:
        return self.enc.encode_ordinary_batch(texts, num_threads=num_threads)

    def decode(self, ids) -> str:
        return self.enc.decode(_ids_to_list(ids))

    def to_meta(self) -> dict:
        # Every accepted source holds the same ranks; the sha256 of their canonical file names them.
        return {"kind": "gpt2", "fingerprint": R50K_TIKTOKEN_SHA256}


# --- SentencePiece ---

DOC_PIECE = "<D>"


class SentencePieceTokenizer:
    """A SentencePiece model file. In a data dir the file name is stored
    relative to the dir so the dir can be moved as a whole."""

    name = "sentencepiece"

    def __init__(self, model_file: Path):
        import sentencepiece as spm

        model_file = Path(model_file)
        if not model_file.is_file():
            raise UserError(f"SentencePiece model {model_file} not found: re-run `gptlab prepare` or "
                            "give the right path")
        self.model_file = model_file
        self.sp = spm.SentencePieceProcessor(model_file=str(model_file))
        self.vocab_size = int(self.sp.get_piece_size())
        doc_id = self.sp.piece_to_id(DOC_PIECE)
        # piece_to_id answers unk for unknown pieces; only a real <D> counts.
        self.eot_id = int(doc_id) if self.sp.id_to_piece(doc_id) == DOC_PIECE else None

    def encode(self, text: str) -> list[int]:
        return self.sp.encode(text, out_type=int)

    def encode_batch(self, texts: list[str], num_threads: int = -1) -> list[list[int]]:
        return self.sp.encode(list(texts), out_type=int, num_threads=num_threads)

    def decode(self, ids) -> str:
        return self.sp.decode(_ids_to_list(ids))

    def to_meta(self) -> dict:
        return {"kind": "sentencepiece", "model_file": self.model_file.name,
                "fingerprint": sha256_file(self.model_file)}


# The Languini benchmark's SentencePiece settings (its vocabulary notebook, books_*.model); the
# rest of SentencePiece's options keep their defaults there too (character_coverage 0.9995).
LANGUINI_SP = dict(
    model_type="bpe", hard_vocab_limit=True, input_sentence_size=2_000_000, max_sentencepiece_length=99,
    pad_id=0, unk_id=1, bos_id=-1, eos_id=-1, user_defined_symbols=[DOC_PIECE],
    split_by_unicode_script=True, split_by_number=True, split_by_whitespace=True, split_digits=True,
    add_dummy_prefix=False, byte_fallback=True, remove_extra_whitespaces=False,
                   allow_whitespace_only_pieces=True,
    normalization_rule_name="identity", vocabulary_output_piece_score=False,
)


def train_sentencepiece(texts: Iterable[str], model_prefix: Path, vocab_size: int = 16384,
                        input_sentence_size: int = LANGUINI_SP["input_sentence_size"],
                        num_threads: int | None = None, seed: int = 0) -> SentencePieceTokenizer:
    """Train a byte-fallback BPE with the benchmark's settings (pad 0, unk 1, <D> 2, no bos/eos);
    identity normalisation, kept whitespace and byte fallback (newlines too) make decode(encode(t)) ==
    t."""
    import sentencepiece as spm

    lines = (line for t in texts for line in t.split("\n")
             if line.strip())  # non-blank lines are the sentences
    model_prefix = Path(model_prefix)
    spm.set_random_generator_seed(seed)  # sentence sampling is random: same corpus and seed, same model
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=lines, model_prefix=str(model_prefix), vocab_size=vocab_size,
            **{**LANGUINI_SP, "input_sentence_size": input_sentence_size},
            num_threads=num_threads or os.cpu_count() or 1, max_sentence_length=16384, minloglevel=2,
        )
    except RuntimeError as e:
        raise UserError(f"SentencePiece training failed ({str(e).splitlines()[0]}): use more text or a "
                        "smaller --vocab_size") from None
    tok = SentencePieceTokenizer(model_prefix.with_suffix(".model"))
    if tok.eot_id != 2 or tok.sp.pad_id() != 0 or tok.sp.unk_id() != 1:
        raise RuntimeError(f"unexpected special ids: pad {tok.sp.pad_id()} unk {tok.sp.unk_id()} <D> "
                           f"{tok.eot_id}")
    return tok


# --- Factories ---

# What every tokenizer offers: name, vocab_size, eot_id, encode, encode_batch, decode, to_meta.
Tokenizer = CharTokenizer | GPT2Tokenizer | SentencePieceTokenizer

TOKENIZER_KINDS = ("char", "gpt2", "sentencepiece")
# A tokenizer model a dataset or run folder names: a plain file name beside meta.json, never a path
# and never one of gptlab's own files (config.json, meta.json, ...), which all end otherwise.
MODEL_FILE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}\.model")


def check_tokenizer_meta(t: dict, vocab_size: int | None, where) -> None:
    """UserError naming `where` unless t is a tokenizer description gptlab can rebuild safely."""
    kind = t.get("kind") if isinstance(t, dict) else None
    fix = "re-create the data with `gptlab prepare ... --overwrite`"
    if kind not in TOKENIZER_KINDS:
        raise UserError(f"{where}: unknown tokenizer {kind!r} (expected one of "
                        f"{', '.join(TOKENIZER_KINDS)}): {fix}")
    if kind == "char":
        chars = t.get("chars")
        if not isinstance(chars, list) or not chars or any(not isinstance(c, str) or len(c) != 1
                                                           for c in chars):
            raise UserError(f"{where}: the character table is missing or damaged: {fix}")
        if vocab_size is not None and len(chars) != vocab_size:
            raise UserError(f"{where}: the character table has {len(chars)} entries but vocab_size is "
                            f"{vocab_size} (truncated?): {fix}")
    if kind == "sentencepiece":
        name = t.get("model_file")
        if not isinstance(name, str) or not MODEL_FILE.fullmatch(name):
            raise UserError(f"{where}: tokenizer model_file {str(name)[:60]!r} is not a plain "
                            f"NAME.model file name beside it: {fix}")


def tokenizer_from_meta(meta: dict, data_dir: Path) -> Tokenizer:
    """The one tokenizer factory: the tokenizer meta["tokenizer"] (or the dict itself) describes; a
    SentencePiece model is read from data_dir (a dataset or run folder) under its checked file name."""
    t = meta.get("tokenizer", meta) if isinstance(meta, dict) else None
    vocab = meta.get("vocab_size") if isinstance(meta, dict) and "tokenizer" in meta else None
    check_tokenizer_meta(t, vocab, Path(data_dir) / "meta.json")
    if t["kind"] == "char":
        return CharTokenizer(t["chars"])
    if t["kind"] == "gpt2":
        return GPT2Tokenizer()
    return SentencePieceTokenizer(Path(data_dir) / t["model_file"])


def tokenizer_files(meta: dict) -> list[str]:
    """File names (checked) a run folder must copy from the dataset folder to rebuild its tokenizer."""
    t = meta.get("tokenizer", {})
    check_tokenizer_meta(t, meta.get("vocab_size"), "meta.json")
    return [t["model_file"]] if t["kind"] == "sentencepiece" else []


# --- Per-token lengths (for per-byte metrics) ---


def _sentencepiece_byte_length(sp, i: int) -> int:
    """UTF-8 bytes that piece i adds to decoded text."""
    if sp.is_byte(i):
        return 1
    if sp.is_control(i) or sp.is_unknown(i) or sp.is_unused(i):
        return 0
    # Normal and user-defined pieces (<D> decodes to its 3 characters); '▁' is a space.
    return len(sp.id_to_piece(i).replace("\u2581", " ").encode("utf-8"))


def token_byte_lengths(tok: Tokenizer) -> np.ndarray:
    """int64 array: the UTF-8 bytes each token id adds to decoded text, exact and additive (half of a
    multi-byte character counts its own bytes); <|endoftext|>, control/unknown/unused pieces 0."""
    if isinstance(tok, CharTokenizer):
        return np.array([len(c.encode("utf-8")) for c in tok.chars], dtype=np.int64)
    if isinstance(tok, GPT2Tokenizer):
        n_special = tok.vocab_size - 1  # ids below are byte sequences; the last is <|endoftext|>
        out = [len(tok.enc.decode_single_token_bytes(i)) for i in range(n_special)]
        return np.array(out + [0], dtype=np.int64)
    return np.array([_sentencepiece_byte_length(tok.sp, i) for i in range(tok.vocab_size)],
                    dtype=np.int64)

