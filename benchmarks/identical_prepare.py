"""Prepare every recipe with two gptlab source trees and compare the sha256 of every output file.

    python benchmarks/identical_prepare.py OLD_TREE NEW_TREE [--work DIR]

OLD_TREE / NEW_TREE are checkouts (e.g. `git worktree add /tmp/old main`); each runs as
`python -m gptlab.cli prepare ...` with PYTHONPATH=TREE, on the same generated inputs."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np


def make_inputs(root: Path) -> dict[str, Path]:
    """Small documents for the text, books and hf recipes (fixed, so both trees read the same bytes)."""
    rng = np.random.default_rng(0)
    words = ["the", "cat", "sat", "on", "a", "mat", "über", "naïve", "日本", "\r\n", "\n"]

    def doc(n: int) -> str:
        return " ".join(words[i] for i in rng.integers(0, len(words), n))

    folder = root / "folder"
    for i in range(12):
        (folder / f"sub{i % 3}").mkdir(parents=True, exist_ok=True)
        (folder / f"sub{i % 3}" / f"doc{i}.txt").write_text(doc(300 + 20 * i), encoding="utf-8")
    (root / "one.txt").write_text(doc(4000), encoding="utf-8")
    books = root / "books"
    for split, count in (("train", 30), ("test", 5)):
        (books / split).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            (books / split / f"{split}_{i}.txt").write_text(doc(400), encoding="utf-8")
    lists = root / "lists"
    lists.mkdir(exist_ok=True)
    for split, count in (("train", 30), ("test", 5)):
        names = np.array([f"{split}_{i}.txt" for i in reversed(range(count))])
        np.save(lists / f"file_list_{split}.npy", names)
    hf = root / "hf"
    hf.mkdir(exist_ok=True)
    with open(hf / "train.jsonl", "w", encoding="utf-8") as f:
        for i in range(400):
            f.write(json.dumps({"text": doc(50)}) + "\n")
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": [doc(40) for _ in range(300)]}), root / "train.parquet")
    return {"folder": folder, "one": root / "one.txt", "books": books, "lists": lists, "hf": hf}


def cases(inputs: dict[str, Path], root: Path) -> dict[str, list[str]]:
    return {
        "shakespeare_char": ["shakespeare_char"],
        "shakespeare": ["shakespeare"],
        "zero_one": ["zero_one", "--seed", "7"],
        "text_file": ["text", "--input", str(inputs["one"])],
        "text_folder_char": ["text", "--input", str(inputs["folder"]), "--tokenizer", "char"],
        "text_folder_pooled": ["text", "--input", str(inputs["folder"]), "--num_proc", "2"],
        "books_sp": ["books", "--input", str(inputs["books"]), "--vocab_size", "300", "--num_threads", "1"],
        "books_lists": ["books", "--input", str(inputs["books"]), "--file_lists", str(inputs["lists"]),
                        "--tokenizer", "gpt2"],
        "hf_jsonl": ["hf", "--dataset", str(inputs["hf"]), "--val_fraction", "0.1", "--num_proc", "2"],
        "hf_parquet": ["hf", "--dataset", str(root / "train.parquet"), "--val_fraction", "0.2",
                       "--num_proc", "1", "--tokenizer", "char"],
    }


def digests(folder: Path, tree: Path) -> dict[str, str]:
    """sha256 of each file; in meta.json the source tree's own path (the bundled text) reads <TREE>."""
    out = {}
    for path in sorted(folder.iterdir()):
        data = path.read_bytes()
        if path.name == "meta.json":
            data = data.replace(str(tree).encode(), b"<TREE>")
        out[path.name] = hashlib.sha256(data).hexdigest()
    return out


def run_tree(tree: Path, name: str, args: list[str], out: Path) -> dict[str, str]:
    """Prepare into `out` (the same path for both trees: SentencePiece records it), then move it aside."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    cmd = [sys.executable, "-m", "gptlab", "prepare", *args, "--out", str(out), "--no_progress"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=out.parent)
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed with {tree}:\n{proc.stdout}\n{proc.stderr}")
    result = digests(out, tree)
    out.rename(out.with_name(f"{out.name}-{tree.name}"))
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("old", type=Path)
    parser.add_argument("new", type=Path)
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="identical-prepare-"))
    inputs = make_inputs(work / "inputs")
    failures = 0
    for name, argv in cases(inputs, work / "inputs").items():
        results = [run_tree(tree.resolve(), name, argv, work / name) for tree in (args.old, args.new)]
        same = results[0] == results[1]
        failures += not same
        files = ", ".join(f"{k} {v[:12]}" for k, v in results[0].items())
        print(f"{'identical' if same else 'DIFFERENT'}  {name}: {files}")
        if not same:
            print(f"    new: {results[1]}")
    print(f"{failures} of {len(cases(inputs, work / 'inputs'))} recipes differ")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
