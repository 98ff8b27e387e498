"""Tokenizers, token files, prepare recipes (gptlab.data)."""

import json
from pathlib import Path

import numpy as np
import pytest

from gptlab.data import tokens as T
from gptlab.data.prepare import TINYSHAKESPEARE_SHA256, prepare, zero_one_bits, zero_one_tokens
from gptlab.data.prepare import main as prepare_main
from gptlab.data.tokenizers import (
    CharTokenizer,
    GPT2Tokenizer,
    SentencePieceTokenizer,
    find_gpt2_ranks,
    tokenizer_from_meta,
    train_sentencepiece,
)
from gptlab.errors import UserError

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"
SHAKESPEARE = SHARED / "tinyshakespeare.txt"
OPENBOOKS = SHARED / "openbooks"

VARIED = [
    "Hello world!",
    "",
    "  leading and trailing spaces  \n\n\ttabs\r\nCRLF",
    "unicode: héllo wörld — naïve café, 日本語のテキスト, emoji 🙂🚀, combining é",
    "digits 1234567890 3.14159 and symbols <|endoftext|> {}[]()",
    "a" * 300,
]


def gpt2_available() -> bool:
    # A fresh machine has no vocabulary yet: let gptlab fetch it through the
    # package registry once (the only network these machines have); skip only
    # if that fails too.
    try:
        find_gpt2_ranks(allow_fetch=True)
        return True
    except UserError:
        return False


needs_gpt2 = pytest.mark.skipif(not gpt2_available(), reason="GPT-2 vocabulary not available offline")


# ---------------------------------------------------------------- tokenizers


@needs_gpt2
def test_gpt2_hello_world_ids():
    tok = GPT2Tokenizer()
    assert tok.encode("Hello world!") == [15496, 995, 0]
    assert tok.vocab_size == 50257 and tok.eot_id == 50256


@needs_gpt2
@pytest.mark.parametrize("text", VARIED)
def test_gpt2_round_trip(text):
    tok = GPT2Tokenizer()
    assert tok.decode(tok.encode(text)) == text
    assert tok.encode_batch([text, text]) == [tok.encode(text)] * 2


@pytest.mark.parametrize("text", [t for t in VARIED if t])
def test_char_round_trip(text):
    tok = CharTokenizer(text)
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert tok.vocab_size == len(set(text))
    assert ids == [tok.chars.index(c) for c in text]  # the vectorised path agrees with the definition
    rebuilt = tokenizer_from_meta(json.loads(json.dumps({"tokenizer": tok.to_meta()})), Path("."))
    assert rebuilt.encode(text) == ids


def test_char_unknown_character_is_user_error():
    tok = CharTokenizer("abc")
    with pytest.raises(UserError, match="not in this character vocabulary"):
        tok.encode("abd")


def test_gpt2_env_pointing_nowhere_is_user_error(monkeypatch, tmp_path):
    monkeypatch.setenv("GPTLAB_GPT2_VOCAB", str(tmp_path))
    with pytest.raises(UserError, match="GPTLAB_GPT2_VOCAB"):
        find_gpt2_ranks(allow_fetch=False)


def test_gpt2_missing_everywhere_names_pip_install(monkeypatch, tmp_path):
    import gptlab.data.tokenizers as tk

    monkeypatch.delenv("GPTLAB_GPT2_VOCAB", raising=False)
    monkeypatch.setenv("GPTLAB_CACHE_DIR", str(tmp_path / "c"))
    monkeypatch.setattr(tk, "_ranks_from_tiktoken_cache", lambda: None)
    monkeypatch.setattr(tk, "_ranks_from_installed_packages", lambda: None)
    with pytest.raises(UserError, match="pip install"):
        find_gpt2_ranks(allow_fetch=False)


@needs_gpt2
def test_gpt2_tampered_vocab_rejected(monkeypatch, tmp_path):
    (tmp_path / "gpt2.tiktoken").write_bytes(b"aGk= 0\n")  # right name, wrong content
    monkeypatch.setenv("GPTLAB_GPT2_VOCAB", str(tmp_path))
    with pytest.raises(UserError):
        find_gpt2_ranks(allow_fetch=False)


SP_TEXT = (
    "The quick brown fox jumps over the lazy dog 42 times.\n"
    "  Indented line with  double  spaces and a tab\there.\n\n"
    "Numbers 2024-01-15, prices $3.99; unicode café naïve — dash.\n"
) * 40


@pytest.fixture(scope="module")
def sp_tok(tmp_path_factory):
    d = tmp_path_factory.mktemp("sp")
    return train_sentencepiece([SP_TEXT], d / "tokenizer", vocab_size=400, num_threads=1)


def test_sentencepiece_special_ids(sp_tok):
    assert sp_tok.sp.pad_id() == 0 and sp_tok.sp.unk_id() == 1 and sp_tok.eot_id == 2
    assert sp_tok.sp.id_to_piece(2) == "<D>"
    assert sp_tok.sp.bos_id() == -1 and sp_tok.sp.eos_id() == -1


@pytest.mark.parametrize(
    "text",
    [SP_TEXT[:500], "  two leading spaces\n\n\nthree newlines\ttab  ", "unseen: 日本語 🙂 Ω≈ç", "\n", " ", "12345 67"],
)
def test_sentencepiece_round_trip_exact(sp_tok, text):
    ids = sp_tok.encode(text)
    assert sp_tok.decode(ids) == text
    assert 2 not in ids  # the document separator is never produced from text


def test_sentencepiece_splits_digits(sp_tok):
    pieces = sp_tok.sp.encode("12345", out_type=str)
    assert all(len(p.replace("▁", "")) <= 1 for p in pieces)


def test_sentencepiece_from_meta(sp_tok):
    meta = {"tokenizer": sp_tok.to_meta()}
    rebuilt = tokenizer_from_meta(meta, sp_tok.model_file.parent)
    assert isinstance(rebuilt, SentencePieceTokenizer)
    assert rebuilt.encode("quick brown fox") == sp_tok.encode("quick brown fox")


# ---------------------------------------------------------------- token files


def _write_small(tmp_path, vocab=100, n=1000, dtype=np.uint16):
    arr = (np.arange(n) % vocab).astype(np.int64)
    w = T.SplitWriter(tmp_path, "train", dtype)
    w.append(arr, np.array([10, 490, 500]))  # documents start at 0, 10, 500
    info = w.finish()
    meta = {"tokenizer": {"kind": "char", "chars": [chr(65 + i) for i in range(vocab)]}, "vocab_size": vocab,
            "dtype": T.dtype_name(dtype), "eot_id": None, "splits": {"train": info}, "source": {}}
    T.write_meta(tmp_path, meta)
    return arr


def test_write_and_load_split(tmp_path):
    arr = _write_small(tmp_path)
    m = T.load_split(tmp_path, "train")
    assert m.dtype == np.uint16 and np.array_equal(np.asarray(m), arr)
    assert np.array_equal(T.doc_offsets(tmp_path, "train"), [0, 10, 500])
    assert not list(tmp_path.glob("*.tmp*")) and not list(tmp_path.glob("*.partial"))
    T.verify_bins(tmp_path, T.read_meta(tmp_path))


def test_dtype_for_vocab():
    assert T.dtype_for_vocab(65536) == np.uint16
    assert T.dtype_for_vocab(65537) == np.uint32


def test_load_split_wrong_size(tmp_path):
    _write_small(tmp_path)
    with open(tmp_path / "train.bin", "ab") as f:
        f.write(b"\0\0")
    with pytest.raises(UserError, match="re-run `gptlab prepare"):
        T.load_split(tmp_path, "train")


def test_load_split_wrong_dtype(tmp_path):
    _write_small(tmp_path)
    meta = json.loads((tmp_path / "meta.json").read_text())
    meta["dtype"] = "uint32"  # bin is uint16: size no longer matches
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(UserError, match="bytes but meta.json says"):
        T.load_split(tmp_path, "train")


def test_id_out_of_vocab(tmp_path):
    _write_small(tmp_path, vocab=100)
    meta = json.loads((tmp_path / "meta.json").read_text())
    meta["vocab_size"] = 50  # ids go up to 99
    meta["tokenizer"]["chars"] = meta["tokenizer"]["chars"][:50]
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(UserError, match="outside the vocabulary"):
        T.check_token_range(T.load_split(tmp_path, "train"), 50)
    with pytest.raises(UserError, match="id 7 at position 3"):
        T.check_token_range(np.array([1, 2, 3, 7, 1]), 5)


def test_hash_mismatch(tmp_path):
    _write_small(tmp_path)
    b = bytearray((tmp_path / "train.bin").read_bytes())
    b[0] ^= 1
    (tmp_path / "train.bin").write_bytes(bytes(b))
    with pytest.raises(UserError, match="sha256"):
        T.verify_bins(tmp_path, T.read_meta(tmp_path))


@pytest.mark.parametrize(
    "content, match",
    [(None, "no meta.json"), ("{not json", "not valid JSON"), ('{"format": "other"}', "format"),
     ('{"format": "gptlab-tokens-1", "vocab_size": 10, "dtype": "float32"}', "dtype")],
)
def test_read_meta_errors(tmp_path, content, match):
    if content is not None:
        (tmp_path / "meta.json").write_text(content)
    with pytest.raises(UserError, match=match):
        T.read_meta(tmp_path)


def test_missing_bin_and_split(tmp_path):
    _write_small(tmp_path)
    with pytest.raises(UserError, match="no split 'val'"):
        T.load_split(tmp_path, "val")
    (tmp_path / "train.bin").unlink()
    with pytest.raises(UserError, match="missing"):
        T.load_split(tmp_path, "train")


# ---------------------------------------------------------------- prepare


def test_text_recipe_char_file(tmp_path):
    src = tmp_path / "in.txt"
    text = "hello there, general kenobi!\n" * 50
    src.write_text(text)
    out = prepare("text", input=src, tokenizer="char", out=tmp_path / "d")
    meta = T.read_meta(out)
    tok = tokenizer_from_meta(meta, out)
    train, val = T.load_split(out, "train"), T.load_split(out, "val")
    assert tok.decode(np.concatenate([train, val])) == text
    assert len(train) == round(len(text) * 0.9)
    assert meta["source"]["sha256"] == __import__("hashlib").sha256(text.encode()).hexdigest()


def test_refuse_overwrite(tmp_path):
    src = tmp_path / "in.txt"
    src.write_text("abcdefghij" * 20)
    prepare("text", input=src, tokenizer="char", out=tmp_path / "d")
    with pytest.raises(UserError, match="--overwrite"):
        prepare("text", input=src, tokenizer="char", out=tmp_path / "d")
    src.write_text("xyz" * 50)
    prepare("text", input=src, tokenizer="char", out=tmp_path / "d", overwrite=True)
    assert T.read_meta(tmp_path / "d")["vocab_size"] == 3


def test_non_utf8_and_empty_input(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"ok text \xff\xfe broken")
    with pytest.raises(UserError, match="not UTF-8"):
        prepare("text", input=bad, tokenizer="char", out=tmp_path / "d1")
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(UserError, match="empty"):
        prepare("text", input=empty, tokenizer="char", out=tmp_path / "d2")
    with pytest.raises(UserError, match="does not exist"):
        prepare("text", input=tmp_path / "nope.txt", tokenizer="char", out=tmp_path / "d3")
    assert not (tmp_path / "d1" / "meta.json").exists()


def test_cli_errors_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="unknown prepare recipe 'zero_on'.*zero_one"):
        prepare_main(["zero_on"])
    with pytest.raises(UserError, match="prepare:"):
        prepare_main(["text", "--bogus"])


@needs_gpt2
def test_text_recipe_directory_gpt2(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    texts = [f"Document number {i}. " + "words " * i for i in range(1, 11)]
    for i, t in enumerate(texts):
        (docs / f"{i:02d}.txt").write_text(t)
    out = prepare("text", input=docs, tokenizer="gpt2", out=tmp_path / "d")
    tok = GPT2Tokenizer()
    train = np.asarray(T.load_split(out, "train"))
    starts = T.doc_offsets(out, "train")
    assert len(starts) == 9 and T.read_meta(out)["splits"]["val"]["documents"] == 1
    expect = np.concatenate([tok.encode(t) + [tok.eot_id] for t in texts[:9]])
    assert np.array_equal(train, expect)
    assert all(train[s - 1] == tok.eot_id for s in starts[1:].astype(int))


@needs_gpt2
def test_zero_one_recipe(tmp_path):
    out = prepare("zero_one", out=tmp_path / "z")
    meta = T.read_meta(out)
    tok = GPT2Tokenizer()
    train, val = T.load_split(out, "train"), T.load_split(out, "val")
    assert meta["splits"]["train"]["documents"] == 9000 and meta["splits"]["val"]["documents"] == 1000
    assert len(train) == 9000 * 1001 and len(val) == 1000 * 1001
    docs = np.asarray(train).reshape(9000, 1001)
    assert np.all(docs[:, -1] == tok.eot_id)  # end-of-text after every document
    assert np.sum(docs[:, :-1] == tok.eot_id) == 0
    zero_ids = {tok.encode("0")[0], tok.encode(" 0")[0]}
    frac0 = np.isin(docs[:, :-1], list(zero_ids)).mean()
    assert abs(frac0 - 1 / 3) < 0.005
    # Exactness: the mapped ids equal a real tiktoken encoding of the documents.
    bits = zero_one_bits(seed=1337)
    for i in (0, 1, 4321, 8999):
        assert docs[i, :-1].tolist() == tok.encode(zero_one_text(bits[i]))
    vdocs = np.asarray(val).reshape(1000, 1001)
    assert vdocs[-1, :-1].tolist() == tok.encode(zero_one_text(bits[-1]))
    assert tok.decode(docs[0, :-1])[:7] == zero_one_text(bits[0])[:7]


def zero_one_text(bits_row) -> str:
    return " ".join("0" if b else "1" for b in bits_row)


@needs_gpt2
def test_zero_one_seeded(tmp_path):
    a = zero_one_tokens(zero_one_bits(20, 50, seed=1), GPT2Tokenizer())
    b = zero_one_tokens(zero_one_bits(20, 50, seed=1), GPT2Tokenizer())
    c = zero_one_tokens(zero_one_bits(20, 50, seed=2), GPT2Tokenizer())
    assert np.array_equal(a, b) and not np.array_equal(a, c)


@pytest.mark.skipif(not SHAKESPEARE.is_file(), reason="../shared/data/tinyshakespeare.txt not present")
def test_shakespeare_char_recipe(tmp_path, capsys):
    out = prepare("shakespeare_char", input=SHAKESPEARE, out=tmp_path / "s")
    meta = T.read_meta(out)
    assert meta["vocab_size"] == 65 and meta["dtype"] == "uint16"
    assert meta["source"]["sha256"] == TINYSHAKESPEARE_SHA256
    n_train, n_val = meta["splits"]["train"]["tokens"], meta["splits"]["val"]["tokens"]
    assert n_train + n_val == 1115394 and n_train == round(1115394 * 0.9)
    assert str(SHAKESPEARE.resolve()) in capsys.readouterr().out  # says where the text came from


def test_shakespeare_rejects_other_text(tmp_path):
    f = tmp_path / "fake.txt"
    f.write_text("not shakespeare")
    with pytest.raises(UserError, match="canonical tiny Shakespeare"):
        prepare("shakespeare_char", input=f, out=tmp_path / "s")


def test_shakespeare_bundled_copy_is_verified(tmp_path, monkeypatch):
    import gptlab.data.prepare as P
    from gptlab.data.prepare import get_tinyshakespeare

    text, source = get_tinyshakespeare()
    assert source["kind"] == "bundled" and len(text) == 1115394 and source["sha256"] == TINYSHAKESPEARE_SHA256
    fake = tmp_path / "pkg"
    (fake / "assets").mkdir(parents=True)
    (fake / "assets" / "tinyshakespeare.txt.gz").write_bytes(__import__("gzip").compress(b"tampered"))
    monkeypatch.setattr(P, "__file__", str(fake / "prepare.py"))  # a damaged bundled copy
    with pytest.raises(UserError, match="--input"):
        get_tinyshakespeare()


def _books_dir(tmp_path):
    root = tmp_path / "books"
    for split, n in (("train", 6), ("test", 2)):
        (root / split).mkdir(parents=True)
        for i in range(n):
            body = "".join(f"Chapter {j}. The {split} book {i} says: line {j * i}, with  spaces.\n" for j in range(60))
            (root / split / f"doc{i}.txt").write_text(body)
    return root


def test_books_recipe_sentencepiece(tmp_path):
    root = _books_dir(tmp_path)
    out = prepare("books", input=root, out=tmp_path / "d", vocab_size=300, num_threads=1)  # hard vocab limit, as Languini
    meta = T.read_meta(out)
    assert set(meta["splits"]) == {"train", "test"}
    fp = __import__("hashlib").sha256((out / "tokenizer.model").read_bytes()).hexdigest()
    assert meta["eot_id"] == 2 and meta["tokenizer"] == {"kind": "sentencepiece", "model_file": "tokenizer.model",
                                                         "fingerprint": fp}
    tok = tokenizer_from_meta(meta, out)
    for split, n in (("train", 6), ("test", 2)):
        arr = np.asarray(T.load_split(out, split))
        starts = T.doc_offsets(out, split).astype(int)
        assert len(starts) == n
        for i, doc in enumerate(np.split(arr, starts[1:])):
            assert doc[-1] == 2  # <D> closes every document
            assert tok.decode(doc[:-1]) == (root / split / f"doc{i}.txt").read_text()


def test_books_requires_train(tmp_path):
    (tmp_path / "b" / "test").mkdir(parents=True)
    (tmp_path / "b" / "test" / "a.txt").write_text("x")
    with pytest.raises(UserError, match="train/"):
        prepare("books", input=tmp_path / "b", out=tmp_path / "d")


@pytest.mark.skipif(not OPENBOOKS.is_dir(), reason="../shared/data/openbooks not present")
def test_books_recipe_on_openbooks_sample(tmp_path):
    """A small real sample of the openbooks corpus: exact per-document round trip, newlines included."""
    root = tmp_path / "ob"
    picks = {"train": sorted((OPENBOOKS / "train").iterdir())[:3], "test": sorted((OPENBOOKS / "test").iterdir())[:1]}
    for split, files in picks.items():
        (root / split).mkdir(parents=True)
        for f in files:
            (root / split / f.name).write_bytes(f.read_bytes()[:60_000].decode("utf-8", "ignore").encode())
    out = prepare("books", input=root, out=tmp_path / "d", vocab_size=1000)
    meta = T.read_meta(out)
    tok = tokenizer_from_meta(meta, out)
    arr = np.asarray(T.load_split(out, "test"))
    assert len(T.doc_offsets(out, "test")) == 1
    assert tok.decode(arr[:-1]) == (root / "test" / picks["test"][0].name).read_text()
    assert meta["source"]["splits"]["train"]["documents"] == 3
