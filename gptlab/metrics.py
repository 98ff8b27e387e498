"""Throughput and MFU, written once.

FLOPs per token (training, forward + backward) = 6N + 12*L*H*Q*T, with N the weights
that take part in matrix multiplies, L layers, H heads, Q head width, T sequence
length (see gptlab.model.flops_per_token). MFU = achieved FLOP/s per device / the
device's dense bf16 peak from the table below; "n/a" when the device is not in it.
"""

from __future__ import annotations

import torch

# Dense (no sparsity) bf16 tensor-core peaks from the vendors' datasheets, FLOP/s.
PEAK_BF16 = {
    "H100 SXM": 989.4e12, "H100 SXM5": 989.4e12, "H100 80GB HBM3": 989.4e12, "H200 NVL": 835e12, "H100 NVL": 835e12, "H100 PCIe": 756e12,
    "H200": 989.4e12, "GH200": 989.4e12, "B200": 2250e12,
    "A100": 312e12, "A800": 312e12, "L40S": 362.05e12, "L4": 121e12, "A10G": 70e12, "A10": 125e12,
    "RTX 4090": 165.2e12, "RTX 3090": 71e12,
}


def device_peak_flops(device: torch.device | str) -> tuple[float | None, str]:
    """(peak FLOP/s, device name); peak None when unknown - never a guessed number."""
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return None, device.type
    name = torch.cuda.get_device_name(device)
    return peak_for_name(name), name


def peak_for_name(name: str) -> float | None:
    """Table lookup on whole tokens of the device name ("L4" must not match "L40"); the longest
    key first so "H100 PCIe" wins over a shorter one. Unknown -> None."""
    import re

    for key in sorted(PEAK_BF16, key=len, reverse=True):
        if re.search(rf"(?<![A-Za-z0-9]){re.escape(key)}(?![A-Za-z0-9])", name):
            return PEAK_BF16[key]
    return None


def mfu(flops_per_token: float, tokens_per_sec_per_device: float, peak: float | None) -> float | None:
    if not peak:
        return None
    return flops_per_token * tokens_per_sec_per_device / peak


def fmt_mfu(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def peak_memory_gb(device: torch.device) -> float | None:
    """Peak device memory allocated by torch on a GPU; on the CPU, the process's peak RSS."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
    except (ImportError, OSError):
        return None
