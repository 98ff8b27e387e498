"""Process group, model wrapping, sharded checkpoints and the stop agreement. Rank and world size
travel as a `Dist` value (from torchrun's RANK / LOCAL_RANK / WORLD_SIZE; none: a single process).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import pickle
import re
import signal
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from gptlab import files, registry
from gptlab.config_check import check_device
from gptlab.errors import UserError
from gptlab.files import sha256_file
from gptlab.layout import CHECKPOINT_DIR


@dataclass
class Dist:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def pick_device(name: str) -> torch.device:
    check_device(name)  # a missing GPU or a bad name is a one-line error before anything runs
    if name == "auto":
        name = ("cuda" if torch.cuda.is_available()
                else "mps" if torch.backends.mps.is_available() else "cpu")
    return torch.device(name)


def init(device_name: str = "auto") -> Dist:
    """Join the process group when launched by torchrun; NCCL on GPU, gloo on CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = pick_device(device_name)
    if world <= 1:
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        return Dist(device=device)
    if "RANK" not in os.environ:
        raise UserError(f"WORLD_SIZE={world} but RANK is unset: launch with torchrun, which sets both")
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise UserError(f"local rank {local_rank} but this node has {torch.cuda.device_count()} "
                            "GPU(s): set --nproc_per_node to at most the GPU count")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        nccl = device.type == "cuda"
        dist.init_process_group(backend="nccl" if nccl else "gloo", device_id=device if nccl else None)
    return Dist(rank=rank, local_rank=local_rank, world_size=world, device=device)


def shutdown(barrier: bool = False) -> None:
    """Destroy the process group (after a barrier when every rank finished: none still needs it)."""
    if dist.is_available() and dist.is_initialized():
        if barrier:
            dist.barrier()
        dist.destroy_process_group()


def wrap_model(model: torch.nn.Module, d: Dist, strategy: str = "ddp",
               mp_dtype: torch.dtype | None = None, bucket_mb: int = 100, bucket_view: bool = True):
    """DDP, or FSDP2 with one shard unit per block (it swaps the parameters in place: build the optimiser
    after this call). mp_dtype: FSDP2's gathered parameter dtype (gradients reduced in fp32)."""
    if not d.enabled:
        return model
    if strategy == "fsdp":
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        if mp_dtype == torch.float16:
            # fp16 needs a sharded gradient scaler; bf16 has fp32's range and needs none.
            raise UserError("--parallel fsdp runs in bfloat16 or float32: use --dtype bfloat16")
        # FSDP2 warns that outputs may be views; the loop never modifies them in place
        warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view tensor")
        mp = MixedPrecisionPolicy(param_dtype=mp_dtype,
                                  reduce_dtype=torch.float32) if mp_dtype else MixedPrecisionPolicy()
        for block in registry.blocks(model):
            fully_shard(block, mp_policy=mp)
        fully_shard(model, mp_policy=mp)
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [d.device.index] if d.device.type == "cuda" else None
    return DDP(model, device_ids=ids, bucket_cap_mb=bucket_mb, gradient_as_bucket_view=bucket_view)


def grad_sync(model: torch.nn.Module, last_micro_step: bool):
    """Gradients are reduced across ranks only on the last micro-step of an accumulation."""
    if hasattr(model, "no_sync") and not last_micro_step:  # DDP
        return model.no_sync()
    if hasattr(model, "set_requires_gradient_sync"):  # FSDP2
        model.set_requires_gradient_sync(last_micro_step)
    return contextlib.nullcontext()


def all_reduce(t: torch.Tensor, d: Dist, op: str = "sum") -> torch.Tensor:
    """A reduced copy of t across ranks: op "sum", "max" or "mean"; t itself on one process."""
    if not d.enabled:
        return t
    t = t.clone()
    dist.all_reduce(t, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
    return t / d.world_size if op == "mean" else t


def barrier(d: Dist) -> None:
    if d.enabled:
        dist.barrier()


def gather_objects(obj, d: Dist) -> list:
    """Every rank's small Python object (sampler / RNG state), in rank order, on every rank."""
    if not d.enabled:
        return [obj]
    out = [None] * d.world_size
    dist.all_gather_object(out, obj)
    return out


def agree_config(values: dict, d: Dist) -> None:
    """Every rank was started with the same config: a sha256 of it is all-gathered before anything is
    read, built or written; on a difference every rank raises the same one-line UserError naming a
    differing key."""
    if not d.enabled:
        return
    digest = hashlib.sha256(json.dumps(values, sort_keys=True, default=repr).encode("utf-8")).hexdigest()
    digests = gather_objects(digest, d)
    if len(set(digests)) == 1:
        return
    every = gather_objects(values, d)  # only on a mismatch: name the key
    other = next(r for r, h in enumerate(digests) if h != digests[0])
    key = next(k for k in sorted(set(every[0]) | set(every[other]),
                                 key=str) if every[0].get(k) != every[other].get(k))
    raise UserError(f"rank {other} was started with {key} = {every[other].get(key)!r} but rank 0 with "
                    f"{every[0].get(key)!r}: start every rank with the same config and arguments")


def full_state_dict(model: torch.nn.Module, d: Dist) -> dict:
    """A plain single-file state dict, on CPU. Under FSDP2 this all-gathers every shard, so
    every rank must call it (only rank 0 receives the tensors)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    if not d.enabled or not any(hasattr(p, "full_tensor") for p in model.parameters()):
        return {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


DCP_RE = re.compile(r"^dcp_\d{8}$")
# The only globals a DCP .metadata written by gptlab names; anything else is refused unread.
_DCP_GLOBALS = {
    *(("pathlib", n) for n in ("PosixPath", "WindowsPath", "PurePosixPath", "PureWindowsPath")),
    ("torch", "Size"), ("torch.serialization", "_get_layout"), ("collections", "OrderedDict"),
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    *(("torch.distributed.checkpoint.metadata", n) for n in (
        "Metadata", "MetadataIndex", "StorageMeta", "TensorProperties", "TensorStorageMetadata",
        "ChunkStorageMetadata", "BytesStorageMetadata", "_MEM_FORMAT_ENCODING")),
}


def sharded_name(step: int) -> str:
    return f"dcp_{step:08d}"


def save_sharded(run_dir, step: int, model: torch.nn.Module, optimizer, d: Dist) -> dict:
    """FSDP2: every rank writes its shards with DCP (global shapes and offsets: loadable on any number of
    ranks). Returns {"name", "metadata_sha256"} for the checksummed single-file checkpoint, so that
    load_sharded reads only what this run wrote."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException  # a BaseException
    from torch.distributed.checkpoint.state_dict import get_state_dict

    name = sharded_name(step)
    folder = Path(run_dir) / CHECKPOINT_DIR / name
    msd, osd = get_state_dict(model, optimizer)
    try:
        dcp.save({"model": msd, "optimizer": osd}, checkpoint_id=str(folder))
    except CheckpointException as e:  # raised on every rank alike, with every rank's failure
        raise _write_failure(folder, e) from None
    # rank 0 wrote .metadata (DCP's coordinator); every rank returns rank 0's hash
    digest = [sha256_file(folder / ".metadata") if d.is_main else None]
    if d.enabled:
        dist.broadcast_object_list(digest, src=0)
    return {"name": name, "metadata_sha256": digest[0]}


def _write_failure(folder: Path, e) -> Exception:
    """One line for a failed DCP write, the same on every rank: the first failing rank's error (a full or
    read-only disk as files words it); a failure that is no OSError is a bug and keeps its type."""
    rank, (error, _trace) = min(e.failures.items())  # DCP keeps (exception, traceback) per failing rank
    if not isinstance(error, OSError):
        return RuntimeError(f"sharded checkpoint write of {folder} failed on rank {rank}: {error!r}")
    known = files.write_error(folder, error)
    what = str(known) if known else f"cannot write {folder}: {error.strerror or error}"
    return UserError(f"{what} (rank {rank}); the previous checkpoint is intact: fix that, then --resume")


def _sharded_folder(run_dir, ref) -> Path:
    """The folder a checkpoint's "sharded" entry names, if gptlab could have written it (dcp_<8 digits>,
    a real folder in checkpoints/)."""
    bad = ("the checkpoint's 'sharded' entry {what}, so the checkpoint was not written by gptlab or was "
           "edited: resume from another checkpoint (delete the newer ckpt_*.pt) or retrain")
    if not (isinstance(ref, dict) and isinstance(ref.get("name"),
                                                 str) and isinstance(ref.get("metadata_sha256"), str)):
        raise UserError(bad.format(what="is not {name, metadata_sha256}"))
    if not DCP_RE.match(ref["name"]) or not re.fullmatch(r"[0-9a-f]{64}", ref["metadata_sha256"]):
        raise UserError(bad.format(what=f"names {ref['name'][:80]!r}, not a dcp_<8 digits> folder with "
                                        "a sha256"))
    ckdir = Path(run_dir) / CHECKPOINT_DIR
    folder = ckdir / ref["name"]
    if folder.is_symlink() or not folder.is_dir() or folder.resolve().parent != ckdir.resolve():
        raise UserError(f"sharded checkpoint {folder} is missing or not a folder inside {ckdir}: "
                        "resume from an older checkpoint (delete the newer ckpt_*.pt)")
    return folder


def _verified_metadata(run_dir, ref):
    """Read .metadata once, check its sha256 against the checkpoint's record, unpickle those bytes
    (restricted); every shard it names must be a plain file of the folder."""
    from torch.distributed.checkpoint.metadata import Metadata

    folder = _sharded_folder(run_dir, ref)
    meta_path = folder / ".metadata"
    if meta_path.is_symlink() or not meta_path.is_file():
        raise UserError(f"sharded checkpoint {folder} is incomplete (no .metadata): "
                        "resume from an older checkpoint (delete the newer ckpt_*.pt)")
    data = meta_path.read_bytes()
    if hashlib.sha256(data).hexdigest() != ref["metadata_sha256"]:
        raise UserError(f"sharded checkpoint {meta_path} does not match the hash its checkpoint "
                        "recorded (changed or damaged): resume from another checkpoint")

    class Restricted(pickle.Unpickler):  # only the classes in _DCP_GLOBALS and torch dtypes
        def find_class(self, module, name):
            if (module, name) in _DCP_GLOBALS:
                return super().find_class(module, name)
            if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
                return getattr(torch, name)
            raise pickle.UnpicklingError(f"refusing {module}.{name}")

    try:
        md = Restricted(io.BytesIO(data)).load()
    except Exception as e:  # noqa: BLE001 - anything but plain DCP metadata is refused
        raise UserError(f"sharded checkpoint metadata {meta_path} is not DCP metadata written by gptlab "
                        f"({str(e)[:120]}): it was not read; resume from another checkpoint") from None
    storage = getattr(md, "storage_data", None) if isinstance(md, Metadata) else None
    files = ({getattr(s, "relative_path", None) for s in storage.values()}
             if isinstance(storage, dict) else {None})
    if any(not isinstance(f, str) or not re.fullmatch(r"[A-Za-z0-9_.]+",
                                                      f) or f.startswith(".") for f in files):
        raise UserError(f"sharded checkpoint metadata {meta_path} names files outside its folder: "
                        "resume from another checkpoint")
    return folder, md


def load_sharded(run_dir, ref, model: torch.nn.Module, optimizer) -> None:
    """Load the DCP checkpoint `ref` (a checkpoint's "sharded" entry) into a plain or FSDP2 model and its
    optimiser, whatever number of ranks wrote it; every rank calls it. Nothing is unpickled unless the
    folder and its .metadata hash are the ones the checkpoint recorded."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException  # a BaseException
    from torch.distributed.checkpoint.filesystem import FileSystemReader
    from torch.distributed.checkpoint.metadata import StorageMeta
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    folder, md = _verified_metadata(run_dir, ref)

    class VerifiedReader(FileSystemReader):
        def read_metadata(self, *args, **kwargs):  # the verified copy, never the file again
            if getattr(md, "storage_meta", None) is None:
                md.storage_meta = StorageMeta()
            md.storage_meta.load_id = self.load_id
            return md

    msd, osd = get_state_dict(model, optimizer)
    state = {"model": msd, "optimizer": osd}
    try:
        dcp.load(state, storage_reader=VerifiedReader(str(folder)))
    # noqa: BLE001 - shards of another model, or short files
    except (Exception, CheckpointException) as e:
        # DCP: the rank's error last
        last = (str(e).strip().splitlines() or [type(e).__name__])[-1].strip()[:160]
        raise UserError(f"sharded checkpoint {folder} cannot be loaded into this model ({last}): resume "
                        "with the run's own config, or from an older checkpoint (delete the newer "
                        "ckpt_*.pt)") from None
    set_state_dict(model, optimizer, model_state_dict=state["model"],
                   optim_state_dict=state["optimizer"])


class StopAgreement:
    """SIGTERM/SIGINT and divergence. Every rank all-reduces [signal, non-finite streak] at the
    same steps, unconditionally, and acts only on the reduced value. A second signal exits at once."""

    def __init__(self, cfg, d: Dist):
        self.d, self.max_bad, self.max_steps = d, cfg.train.max_nonfinite, cfg.train.max_iters
        self.every = max(1, min(cfg.train.max_nonfinite, cfg.log.log_interval))
        self.signum = 0
        self.pending = None  # (step, host copy, event) of the last check, on a GPU
        self.previous = {}
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(ValueError):  # not the main thread (a test thread)
                self.previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        if self.signum:
            os._exit(128 + signum)
        self.signum = signum
        print(f"\nsignal {signal.Signals(signum).name}: finishing the current step and writing a "
              "checkpoint (send it again to exit at once)", file=sys.stderr, flush=True)

    def poll(self, state) -> str | None:
        """None, "signal" or "diverged". On a GPU the reduced flags reach the host in the background
        and are read at the next check: checking never stalls the device queue."""
        end = state.step == self.max_steps
        if self.signum and not self.d.enabled:  # a single process acts on its own signal at once
            return "signal"
        if state.step % self.every and not end:
            return None
        flags = torch.stack([torch.full((), float(self.signum), device=state.consec_bad.device),
                             state.consec_bad])
        flags = all_reduce(flags, self.d, "max")  # every rank, at these steps
        if flags.is_cuda and not end:
            host = torch.empty(2, pin_memory=True).copy_(flags, non_blocking=True)
            ready = torch.cuda.Event()
            ready.record()
            previous, self.pending = self.pending, (state.step, host, ready)
            if previous is None:
                return None
            step, host, ready = previous
            ready.synchronize()  # recorded one check ago: long complete, no stall
            values = host.tolist()
        else:
            step, values = state.step, flags.tolist()  # .tolist(): a CPU-GPU sync
        signum, streak = values
        state.note_streak(step, int(streak))  # the current streak only: a recovered blip is forgotten
        self.signum = self.signum or int(signum)
        return "diverged" if streak >= self.max_bad else ("signal" if signum else None)

    def restore(self) -> None:
        for sig, handler in self.previous.items():
            with contextlib.suppress(ValueError, TypeError):
                signal.signal(sig, handler)
