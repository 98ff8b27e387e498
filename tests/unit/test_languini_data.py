"""The benchmark's data route (issue 13): an existing SentencePiece model, Languini file lists, named splits."""

import hashlib

import numpy as np
import pytest

spm = pytest.importorskip("sentencepiece")

from gptlab.data import prepare as P  # noqa: E402
from gptlab.data import tokens as T  # noqa: E402
from gptlab.errors import UserError  # noqa: E402

WORDS = ["the", "river", "Zürich", "naïve", "café", "北京", "“quoted”", "don’t", "42", "1999", "—", "snow", "☃", "book"]


def _doc(rng, n_lines):
    return "".join(" ".join(rng.choice(WORDS, size=int(rng.integers(3, 12)))) + "\n" for _ in range(n_lines))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Documents in split folders, and a SentencePiece model trained on them by the library itself."""
    root = tmp_path_factory.mktemp("lang")
    rng = np.random.default_rng(0)
    docs = {"train": [_doc(rng, 30) for _ in range(8)], "test_iid": [_doc(rng, 10) for _ in range(3)]}
    for split, texts in docs.items():
        (root / "books" / split).mkdir(parents=True)
        for i, t in enumerate(texts):
            (root / "books" / split / f"{split}_{i:02d}.txt").write_text(t, encoding="utf-8")
    with open(root / "sp.txt", "w", encoding="utf-8") as f:
        f.write("<D>" + "<D>".join(docs["train"]))
    spm.SentencePieceTrainer.train(input=str(root / "sp.txt"), model_prefix=str(root / "books_300"), model_type="bpe",
                                   vocab_size=300, pad_id=0, unk_id=1, bos_id=-1, eos_id=-1,
                                   user_defined_symbols=["<D>"], byte_fallback=True, add_dummy_prefix=False,
                                   remove_extra_whitespaces=False, normalization_rule_name="identity",
                                   hard_vocab_limit=False, minloglevel=2)
    return root, docs, spm.SentencePieceProcessor(model_file=str(root / "books_300.model"))


def _documents(out, split):
    arr = np.asarray(T.load_split(out, split))
    return [d.tolist() for d in np.split(arr, T.doc_offsets(out, split)[1:].astype(np.int64))]


def test_tokenizer_model_bins_equal_sentencepiece_encoding(corpus, tmp_path):
    root, docs, sp = corpus
    model = root / "books_300.model"
    out = P.prepare("books", input=root / "books", tokenizer_model=model, out=tmp_path / "d", progress=False)
    meta = T.read_meta(out)
    assert (out / "tokenizer.model").read_bytes() == model.read_bytes()  # copied: the folder stands alone
    assert meta["tokenizer"]["fingerprint"] == hashlib.sha256(model.read_bytes()).hexdigest()
    d = sp.piece_to_id("<D>")
    assert meta["eot_id"] == d == 2 and set(meta["splits"]) == {"train", "test_iid"}
    for split, texts in docs.items():
        assert _documents(out, split) == [sp.encode(t) + [d] for t in texts]


def test_file_lists_give_order_named_splits_and_universal_newlines(corpus, tmp_path, capsys):
    root, docs, sp = corpus
    flat = tmp_path / "books3" / "nested"
    flat.mkdir(parents=True)
    names = {s: [f"{s}_{i:02d}" for i in range(len(t))] for s, t in docs.items()}
    for s, texts in docs.items():
        for n, t in zip(names[s], texts):
            (flat / f"{n}.txt").write_bytes(t.replace("\n", "\r\n").encode())  # CRLF on disk
    lists = tmp_path / "lists"
    lists.mkdir()
    order = {"train": [5, 1, 7, 0, 2, 3, 6, 4], "test_iid": [2, 0, 1]}
    for s, idx in order.items():
        rows = np.array([[f"books3/nested/{names[s][i]}.txt", str(len(sp.encode(docs[s][i])))] for i in idx])
        np.save(lists / f"file_list_{s}.npy", rows)
    out = P.prepare("books", input=tmp_path / "books3", file_lists=lists, tokenizer_model=root / "books_300.model",
                    out=tmp_path / "d", progress=False)
    assert "train: all of 8 documents match" in capsys.readouterr().out
    for s, idx in order.items():
        assert _documents(out, s) == [sp.encode(docs[s][i]) + [2] for i in idx]
    only = P.prepare("books", input=tmp_path / "books3", file_lists=lists, splits=["test_iid"],
                     tokenizer_model=root / "books_300.model", out=tmp_path / "d2", progress=False)
    assert list(T.read_meta(only)["splits"]) == ["test_iid"]


def test_object_file_list_is_refused_without_unpickling(corpus, tmp_path):
    root, _, _ = corpus
    lists = tmp_path / "lists"
    lists.mkdir()
    np.save(lists / "file_list_train.npy", np.array([["a", 1]], dtype=object), allow_pickle=True)
    with pytest.raises(UserError, match="pickle"):
        P.prepare("books", input=root / "books", file_lists=lists, out=tmp_path / "d")
    assert not (tmp_path / "d").exists()


def test_new_tokenizer_uses_the_benchmark_settings(corpus, tmp_path):
    root, _, _ = corpus
    out = P.prepare("books", input=root / "books", vocab_size=300, out=tmp_path / "d", progress=False)
    sp = spm.SentencePieceProcessor(model_file=str(out / "tokenizer.model"))
    assert sp.id_to_piece(2) == "<D>" and not sp.is_control(2)  # user-defined, as the benchmark's
    assert 2 in sp.encode("a<D>b") and sp.get_piece_size() == 300  # hard vocabulary limit
    assert sp.pad_id() == 0 and sp.unk_id() == 1 and sp.bos_id() == -1 and sp.eos_id() == -1
    assert all(len(p) == 1 or p.startswith("<0x") for p in sp.encode("1999 42", out_type=str)[:4])  # split digits
