"""GPT-2 BPE preparation throughput: gptlab's `prepare hf` against the plain
`datasets.map(tokenize, batched=True, num_proc=N)` route, on the same text, in
the same run; writes benchmarks/results/tokenize_cpu.json.

    python benchmarks/bench_tokenize.py [--openbooks DIR] [--num_proc 2] [--repeats 3]

Text: every document of every split of openbooks (one jsonl row per file).
Both routes end with the same bytes on disk (checked): a uint16 bin of each
document's ids followed by <|endoftext|>.

  peer  ("datasets.map"): load_dataset("json") into an Arrow cache (timed
        separately), then map(tokenize, batched=True, num_proc=N) with
        encode_ordinary per document, then the usual memmap concatenation
        into train.bin. Timed: map + write (and map alone).
  ours  ("gptlab prepare hf"): the whole prepare from the jsonl file: read,
        tokenise in N processes, write bin + docs + meta with sha256.

Routes alternate within each repeat so machine noise hits both alike; medians
are reported. Each route runs in a fresh subprocess, so neither inherits the
other's warm caches or threads.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OPENBOOKS = ROOT.parent / "shared" / "data" / "openbooks"

PEER = r"""
import sys, time, json, numpy as np, datasets
from gptlab.data.tokenizers import gpt2_encoding
jsonl, cache, out, num_proc = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
datasets.disable_progress_bars()
enc = gpt2_encoding()
t0 = time.perf_counter()
ds = datasets.load_dataset("json", data_files=jsonl, split="train", cache_dir=cache)
t1 = time.perf_counter()
def tokenize(batch):
    ids = [enc.encode_ordinary(t) + [enc.eot_token] for t in batch["text"]]
    return {"ids": ids, "len": [len(x) for x in ids]}
tok = ds.map(tokenize, batched=True, num_proc=num_proc, remove_columns=["text"])
t2 = time.perf_counter()
n = int(np.sum(tok["len"], dtype=np.uint64))
arr = np.memmap(out, dtype=np.uint16, mode="w+", shape=(n,))
shards, idx = 64, 0
for i in range(min(shards, len(tok))):
    b = tok.shard(num_shards=min(shards, len(tok)), index=i, contiguous=True).with_format("numpy")
    a = np.concatenate(b["ids"])
    arr[idx: idx + len(a)] = a
    idx += len(a)
arr.flush()
t3 = time.perf_counter()
print(json.dumps({"load_s": t1 - t0, "map_s": t2 - t1, "write_s": t3 - t2, "tokens": n}))
"""

OURS = r"""
import sys, time, json
from gptlab.data.hf_prepare import prepare_hf
from gptlab.data.tokenizers import gpt2_encoding
jsonl, out, num_proc = sys.argv[1], sys.argv[2], int(sys.argv[3])
gpt2_encoding()  # vocab load is outside the timing for both routes
t0 = time.perf_counter()
prepare_hf(jsonl, val_fraction=0.0, num_proc=num_proc, out=out, overwrite=True, progress=False)
t1 = time.perf_counter()
m = json.load(open(out + "/meta.json"))
print(json.dumps({"prepare_s": t1 - t0, "tokens": m["splits"]["train"]["tokens"]}))
"""


def run(code: str, *args) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    r = subprocess.run([sys.executable, "-c", code, *map(str, args)], env=env, capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(f"benchmark subprocess failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--openbooks", default=str(OPENBOOKS))
    ap.add_argument("--num_proc", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "tokenize_cpu.json"))
    a = ap.parse_args()
    root = Path(a.openbooks)
    files = sorted(p for p in root.rglob("*.txt") if p.is_file())
    if not files:
        raise SystemExit(f"no .txt documents under {root}")
    with tempfile.TemporaryDirectory() as td:
        td = Path(td)
        jsonl = td / "openbooks.jsonl"
        nbytes = 0
        with open(jsonl, "w", encoding="utf-8") as f:
            for p in files:
                t = p.read_text(encoding="utf-8")
                nbytes += len(t.encode("utf-8"))
                f.write(json.dumps({"text": t}) + "\n")
        peer, ours = [], []
        for r in range(a.repeats):
            cache = td / f"cache{r}"
            peer.append(run(PEER, jsonl, cache, td / "peer.bin", a.num_proc))
            ours.append(run(OURS, jsonl, str(td / "ours"), a.num_proc))
            print(f"repeat {r}: peer map+write {peer[-1]['map_s'] + peer[-1]['write_s']:.2f}s "
                  f"(map {peer[-1]['map_s']:.2f}s), ours {ours[-1]['prepare_s']:.2f}s", flush=True)
        same = (td / "peer.bin").read_bytes() == (td / "ours" / "train.bin").read_bytes()
    if not same:
        raise SystemExit("the two routes produced different tokens: the comparison is void")
    peer_total = statistics.median(p["map_s"] + p["write_s"] for p in peer)
    peer_map = statistics.median(p["map_s"] for p in peer)
    ours_s = statistics.median(o["prepare_s"] for o in ours)
    tokens = ours[0]["tokens"]
    res = {
        "benchmark": "tokenize",
        "command": "python benchmarks/bench_tokenize.py " + " ".join(sys.argv[1:]),
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": platform.machine(), "platform": platform.platform(), "python": platform.python_version(),
        "cpus": os.cpu_count(), "num_proc": a.num_proc, "repeats": a.repeats,
        "text": {"source": str(root), "documents": len(files), "bytes": nbytes, "gpt2_tokens": tokens},
        "note": "medians over repeats; routes alternate; the machine is shared, so timings are noisy. "
                "Both routes write identical bins (checked). Vocab load excluded for both; peer's Arrow load excluded.",
        "peer_datasets_map": {"map_plus_write_s": round(peer_total, 3), "map_only_s": round(peer_map, 3),
                              "load_s_median": round(statistics.median(p["load_s"] for p in peer), 3),
                              "MB_per_s": round(nbytes / peer_total / 1e6, 2),
                              "all": [{k: round(v, 3) if isinstance(v, float) else v for k, v in p.items()} for p in peer]},
        "gptlab_prepare_hf": {"prepare_s": round(ours_s, 3), "MB_per_s": round(nbytes / ours_s / 1e6, 2),
                              "tokens_per_s": round(tokens / ours_s),
                              "all": [round(o["prepare_s"], 3) for o in ours]},
        "speedup_vs_map_plus_write": round(peer_total / ours_s, 2),
        "speedup_vs_map_only": round(peer_map / ours_s, 2),
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps({k: res[k] for k in ("text", "peer_datasets_map", "gptlab_prepare_hf",
                                          "speedup_vs_map_plus_write", "speedup_vs_map_only")}, indent=1))


if __name__ == "__main__":
    main()
