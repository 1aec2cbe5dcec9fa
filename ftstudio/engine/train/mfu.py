"""Model FLOPs utilisation: training FLOPs per second over the card's own bf16 dense peak.

The peak comes from a table of vendor datasheet figures (dense bf16 tensor-core TFLOP/s, i.e. half the
"with sparsity" figure; for GeForce and RTX cards the figure with FP32 accumulation, which is what training
runs), looked up by the device's name (``torch.cuda.get_device_name``, else NVML). A card not in the table
gets no MFU at all ("unknown card: MFU not shown") rather than a figure against another card's peak.

No torch at module level: the table and the arithmetic are plain Python.
"""
from __future__ import annotations

import math
import re

# (pattern on the lower-cased name without "nvidia"/"geforce", peak bf16 dense TFLOP/s, datasheet).
# Order matters: the first match wins (NVL / PCIe variants before the bare name, GH200 before H200).
PEAKS: tuple[tuple[str, float, str], ...] = (
    (r"gh200", 989.0, "GH200 Grace Hopper datasheet: BF16 1,979 TFLOPS with sparsity"),
    (r"h200.*nvl", 835.0, "H200 NVL datasheet: BF16 1,671 TFLOPS with sparsity"),
    (r"h200", 989.0, "H200 SXM datasheet: BF16 1,979 TFLOPS with sparsity"),
    (r"h100.*nvl", 835.0, "H100 NVL datasheet: BF16 1,671 TFLOPS with sparsity"),
    (r"h100.*pcie", 756.0, "H100 PCIe datasheet: BF16 1,513 TFLOPS with sparsity"),
    (r"h100", 989.0, "H100 SXM datasheet: BF16 1,979 TFLOPS with sparsity"),
    (r"h800.*pcie", 756.0, "H800 PCIe: the H100 PCIe's tensor cores"),
    (r"h800", 989.0, "H800 SXM: the H100 SXM's tensor cores"),
    (r"b200", 2250.0, "HGX B200 datasheet: FP16/BF16 18 PFLOPS with sparsity for 8 GPUs"),
    (r"a100", 312.0, "A100 datasheet (40 and 80 GB, SXM and PCIe): BF16 312 TFLOPS dense"),
    (r"a800", 312.0, "A800: the A100's tensor cores"),
    (r"a30", 165.0, "A30 datasheet: BF16 165 TFLOPS dense"),
    (r"a10", 125.0, "A10 datasheet: BF16 125 TFLOPS dense"),
    (r"l40s", 362.0, "L40S datasheet: BF16 362.05 TFLOPS dense"),
    (r"l40", 181.0, "L40 datasheet: BF16 181.05 TFLOPS dense"),
    (r"l4", 121.0, "L4 datasheet: BF16 242 TFLOPS with sparsity"),
    (r"rtx a6000", 154.8, "NVIDIA Ampere GA102 whitepaper: RTX A6000 BF16 154.8 TFLOPS dense"),
    (r"rtx 5090", 209.5, "NVIDIA RTX Blackwell whitepaper: RTX 5090 BF16, FP32 accumulate, 209.5 dense"),
    (r"rtx 4090", 165.2, "NVIDIA Ada whitepaper: RTX 4090 BF16, FP32 accumulate, 165.2 dense"),
    (r"rtx 4080", 97.5, "NVIDIA Ada whitepaper: RTX 4080 BF16, FP32 accumulate, 97.5 dense"),
    (r"rtx 3090", 71.0, "NVIDIA Ampere GA102 whitepaper: RTX 3090 BF16, FP32 accumulate, 71 dense"),
    (r"rtx 3080", 59.5, "NVIDIA Ampere GA102 whitepaper: RTX 3080 BF16, FP32 accumulate, 59.5 dense"),
)
# A name must end right after the pattern's model number or go on with a form factor / memory size only:
# "RTX 4090 D", "RTX 3090 Ti", "A10G" and "L40 CNX" are other chips and stay unknown.
_TAIL = r"(?:[ -](?:sxm\d?|pcie|nvl|hbm\d?e?|\d+\s?gb|[-\w]*gb))*$"


def _norm(name: str) -> str:
    n = re.sub(r"\b(nvidia|geforce|tesla)\b", " ", name.lower())
    return re.sub(r"\s+", " ", n).strip()


def peak_tflops(device_name: str | None) -> float | None:
    """The card's bf16 dense peak in TFLOP/s from its name, or None when the card is not in the table."""
    name = _norm(device_name or "")
    for pattern, peak, _source in PEAKS:
        m = re.search(rf"(?<![a-z0-9]){pattern}(?![a-z0-9])", name)
        if m and (pattern.endswith(("nvl", "pcie")) or re.fullmatch(_TAIL, name[m.end():])):
            return peak
    return None


def device_name(device: str = "cuda") -> str | None:
    """The CUDA device's name (torch), else NVML's first GPU's, else None."""
    try:
        import torch
        if device.startswith("cuda") and torch.cuda.is_available():
            return torch.cuda.get_device_name(torch.device(device))
    except Exception:  # noqa: BLE001 - no CUDA build, a driver that fails: ask NVML
        pass
    from ftstudio.engine.hardware import list_gpus
    gpus = list_gpus()
    return gpus[0].name if gpus else None


def step_flops(params: int, layers: int, hidden: int, seq_len: int, tokens: int) -> float:
    """Training FLOPs for ``tokens`` tokens: 6·N per token plus attention 12·L·d·s (PaLM's MFU convention,
    causal attention counted fully), as the HF Trainer anchor counts them."""
    return float(6 * params + 12 * layers * hidden * seq_len) * tokens


def mfu(flops: float, seconds: float, peak: float | None) -> float:
    """flops / seconds / peak (TFLOP/s); NaN where the peak is unknown (never a figure against another card)."""
    if peak is None or not math.isfinite(flops):
        return float("nan")
    return flops / max(seconds, 1e-12) / (peak * 1e12)


def mfu_text(flops_per_s: float, name: str | None) -> str:
    """"MFU 57.8 % of 989 TFLOP/s (NVIDIA H100 80GB HBM3)", or why no MFU is shown."""
    peak = peak_tflops(name)
    if peak is None:
        return f"unknown card ({name or 'no GPU'}): MFU not shown"
    return f"MFU {100 * mfu(flops_per_s, 1.0, peak):.1f} % of {peak:g} TFLOP/s ({name})"
