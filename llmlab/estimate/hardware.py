"""Accelerator table: peak dense TFLOP/s by dtype, memory capacity and bandwidth, from vendor datasheets.

Every number is the vendor's published peak for *dense* math: NVIDIA datasheets print Tensor Core
figures "with sparsity" (marked *) — we store half of those. None means the part has no such
tensor-core path (V100/T4 have no BF16); estimates then fail with a clear message rather than guess.

Memory capacity is the marketed size read as binary gigabytes (an "80GB" HBM part has 80 GiB);
the driver shows slightly less (ECC, reserved regions) and CUDA's context takes ~0.3-1 GiB more.
Bandwidth is in decimal GB/s, as printed.

Sources (datasheets / whitepapers, fetched 2024-2025):
  A100:  NVIDIA A100 Tensor Core GPU datasheet (SXM/PCIe, 40/80GB): FP32 19.5, TF32 156, BF16/FP16 312.
  H100:  NVIDIA H100 Tensor Core GPU datasheet: SXM BF16 1,979*, TF32 989*, FP8 3,958*, FP32 67, 3.35 TB/s;
         PCIe BF16 1,513*, TF32 756*, FP8 3,026*, FP32 51, 2.0 TB/s.
  H200:  NVIDIA H200 datasheet: same compute as H100 SXM; 141 GB HBM3e at 4.8 TB/s.
  L40S:  NVIDIA L40S datasheet: FP32 91.6, TF32 183 (366*), BF16/FP16 362.05 (733*), FP8 733 (1,466*);
         48 GB GDDR6, 864 GB/s (its dense figures, not sparse/2: 733 / 2 = 366.5 overstates BF16 by 1.2%).
  L4:    NVIDIA L4 datasheet: FP32 30.3, TF32 120*, BF16/FP16 242*, FP8 485*; 24 GB, 300 GB/s.
  A10:   NVIDIA A10 datasheet: FP32 31.2, TF32 125*, BF16/FP16 250*; 24 GB GDDR6, 600 GB/s.
  V100:  NVIDIA V100 datasheet: SXM2 FP32 15.7, tensor FP16 125, 900 GB/s; PCIe FP32 14, FP16 112.
  T4:    NVIDIA T4 datasheet: FP32 8.1, mixed FP16 65; 16 GB GDDR6, 320 GB/s.
  RTX 4090: NVIDIA Ada Lovelace architecture whitepaper, Appendix A: FP16/BF16 tensor with FP32
         accumulate 165.2 (330.4*), TF32 82.6, FP32 82.6; 24 GB GDDR6X, 1,008 GB/s.
  RTX 3090: NVIDIA Ampere GA102 whitepaper: FP16/BF16 tensor with FP32 accumulate 71 (142*),
         TF32 35.6, FP32 35.6; 24 GB GDDR6X, 936 GB/s.
  MI300X: AMD Instinct MI300X datasheet: FP16/BF16 1,307.4, TF32 653.7, FP8 2,614.9, FP32 163.4
         (matrix); 192 GB HBM3, 5.3 TB/s.
GeForce cards are listed with FP32 accumulation (what training uses); FP16-accumulate is 2x.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from llmlab.errors import ConfigError

GiB = 2**30


@dataclass(frozen=True, slots=True)
class GPU:
    name: str
    memory_gib: float
    bandwidth_gbs: float  # decimal GB/s
    tflops: dict[str, float | None]  # dense peak, TFLOP/s, keys fp32, tf32, bf16, fp16, fp8
    source: str

    @property
    def memory_bytes(self) -> int:
        return int(self.memory_gib * GiB)

    @property
    def bandwidth(self) -> float:
        """Bytes per second."""
        return self.bandwidth_gbs * 1e9

    def peak_flops(self, dtype: str) -> float:
        """Peak dense FLOP/s for `dtype` ("bf16", "fp16", "tf32", "fp32", "fp8")."""
        if dtype not in self.tflops:
            raise ConfigError(f"unknown compute dtype {dtype!r}; choose one of {', '.join(self.tflops)}.")
        value = self.tflops[dtype]
        if value is None:
            have = [k for k, v in self.tflops.items() if v is not None]
            raise ConfigError(f"{self.name} has no {dtype} tensor-core path; use one of {', '.join(have)}.")
        return value * 1e12


def _gpu(name: str, mem: float, bw: float, fp32: float, tf32: float | None, bf16: float | None,
         fp16: float | None, fp8: float | None, source: str) -> GPU:
    return GPU(name, mem, bw, {"fp32": fp32, "tf32": tf32, "bf16": bf16, "fp16": fp16, "fp8": fp8}, source)


GPUS: dict[str, GPU] = {g.name: g for g in [
    _gpu("A100-40GB", 40, 1555, 19.5, 156, 312, 312, None, "NVIDIA A100 datasheet (SXM4 40GB)"),
    _gpu("A100-80GB", 80, 2039, 19.5, 156, 312, 312, None, "NVIDIA A100 datasheet (SXM4 80GB)"),
    _gpu("A100-80GB-PCIe", 80, 1935, 19.5, 156, 312, 312, None, "NVIDIA A100 datasheet (PCIe 80GB)"),
    _gpu("H100-SXM", 80, 3350, 67, 494.5, 989.5, 989.5, 1979, "NVIDIA H100 datasheet (SXM5), sparse/2"),
    _gpu("H100-PCIe", 80, 2000, 51, 378, 756.5, 756.5, 1513, "NVIDIA H100 datasheet (PCIe), sparse/2"),
    _gpu("H200", 141, 4800, 67, 494.5, 989.5, 989.5, 1979, "NVIDIA H200 datasheet (SXM), sparse/2"),
    _gpu("L40S", 48, 864, 91.6, 183, 362.05, 362.05, 733, "NVIDIA L40S datasheet (dense)"),
    _gpu("L4", 24, 300, 30.3, 60, 121, 121, 242.5, "NVIDIA L4 datasheet, sparse/2"),
    _gpu("A10", 24, 600, 31.2, 62.5, 125, 125, None, "NVIDIA A10 datasheet, sparse/2"),
    _gpu("V100-SXM2", 32, 900, 15.7, None, None, 125, None, "NVIDIA V100 datasheet (SXM2 32GB)"),
    _gpu("V100-PCIe", 32, 900, 14, None, None, 112, None, "NVIDIA V100 datasheet (PCIe 32GB)"),
    _gpu("T4", 16, 320, 8.1, None, None, 65, None, "NVIDIA T4 datasheet"),
    _gpu("RTX-4090", 24, 1008, 82.6, 82.6, 165.2, 165.2, 330.3, "NVIDIA Ada whitepaper, FP32 accumulate"),
    _gpu("RTX-3090", 24, 936, 35.6, 35.6, 71, 71, None, "NVIDIA GA102 whitepaper, FP32 accumulate"),
    _gpu("MI300X", 192, 5300, 163.4, 653.7, 1307.4, 1307.4, 2614.9, "AMD Instinct MI300X datasheet"),
]}

# Common spellings people type; matched after lower-casing and dropping spaces/underscores.
_ALIASES = {"a100": "A100-80GB", "a10080gb": "A100-80GB", "a10040gb": "A100-40GB", "h100": "H100-SXM",
            "h100sxm5": "H100-SXM", "4090": "RTX-4090", "rtx4090": "RTX-4090", "3090": "RTX-3090",
            "v100": "V100-SXM2", "l40s": "L40S", "h200": "H200", "mi300x": "MI300X"}
# Words of driver-reported names (torch.cuda.get_device_name, nvidia-smi): the vendor's, which say nothing,
# and the form factor's (an H100's "HBM3" is the SXM part; the PCIe one has HBM2e).
_VENDOR_WORDS = {"nvidia", "amd", "tesla", "geforce", "rtx", "instinct"}
_FORM_WORDS = {"pcie": "pcie", "sxm": "sxm", "sxm2": "sxm", "sxm4": "sxm", "sxm5": "sxm", "hbm3": "sxm"}


def _norm(name: str) -> str:
    return name.lower().replace("-", "").replace("_", "").replace(" ", "")


def _family(name: str) -> str:
    """A table name's chip: 'A100-80GB-PCIe' -> 'a100', 'RTX-4090' -> '4090'."""
    return name.lower().removeprefix("rtx-").split("-")[0]


_CHIPS = frozenset(_family(name) for name in GPUS)  # the table's chip names, as driver names are read


def get_gpu(name: str | GPU) -> GPU:
    """The GPU called `name`: a table name or alias (case and dashes ignored: "a100", "H100-SXM", "rtx 4090"),
    or a driver-reported name ("NVIDIA A100 80GB PCIe", "Tesla V100-SXM2-32GB", "NVIDIA H100 80GB HBM3").

    A driver name is read as chip + memory + form factor; what it leaves open takes the chip's default (the
    alias: an 80GB A100 is the SXM part), and a word it cannot place ("H100 NVL", "RTX 3090 Ti") is refused."""
    if isinstance(name, GPU):
        return name
    key = _norm(name)
    for gpu in GPUS.values():
        if _norm(gpu.name) == key:
            return gpu
    if key in _ALIASES:
        return GPUS[_ALIASES[key]]
    words = [w for w in re.findall(r"[a-z0-9]+", re.sub(r"(\d+)\s*gb\b", r"\1gb", name.lower()))
             if w not in _VENDOR_WORDS]
    chip = next((w for w in words if w in _CHIPS), None)
    if chip is None:
        raise ConfigError(f"unknown GPU {name!r}; known GPUs: {', '.join(GPUS)} (driver names such as "
                          "'NVIDIA A100 80GB PCIe' work too).")
    sizes = [int(w[:-2]) for w in words if re.fullmatch(r"\d+gb", w)]
    forms = [_FORM_WORDS[w] for w in words if w in _FORM_WORDS]
    unplaced = len(words) - 1 - len(sizes) - len(forms)  # e.g. "NVL" of an H100 NVL, "Ti" of a 3090 Ti
    found = [] if unplaced else [g for g in GPUS.values() if _family(g.name) == chip and
                                 all(g.memory_gib == size for size in sizes)]
    for form in forms:  # a part the table has in one form only (the A100 40GB) keeps its entry
        found = [g for g in found if ("pcie" in g.name.lower()) == (form == "pcie")] or found
    if len(found) > 1 and _ALIASES.get(chip) in {g.name for g in found}:
        found = [GPUS[_ALIASES[chip]]]
    if len(found) != 1:
        same = ", ".join(g.name for g in GPUS.values() if _family(g.name) == chip)
        raise ConfigError(f"GPU {name!r} is none of the table's {chip.upper()} entries ({same}); pass one of "
                          f"those names, or another known GPU: {', '.join(GPUS)}.")
    return found[0]


def check_n_gpus(n_gpus: int) -> None:
    """A GPU count divides a peak or a time: it must be a positive whole number."""
    if n_gpus < 1:
        raise ConfigError(f"n_gpus must be at least 1, got {n_gpus}.")


def gpu_from_device_name(name: str) -> GPU | None:
    """The table entry for a driver-reported name such as 'NVIDIA H100 80GB HBM3' (None when unknown or ambiguous)."""
    try:
        return get_gpu(name)
    except ConfigError:
        return None
