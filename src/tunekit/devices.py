"""The one place that knows about devices, dtypes, threads and the allocator.

Policy: bf16 where the hardware does bf16 matmuls natively (CUDA with bf16 support; x86 CPUs with
AVX-512 BF16 or AMX, where bf16 matmuls run several times faster than fp32), fp32 elsewhere.
Frozen weights are stored in the compute dtype; trainable weights stay fp32 so small updates are
not rounded away.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import Literal

import torch

DtypeName = Literal["auto", "bf16", "fp16", "fp32"]
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


@dataclass(frozen=True)
class DeviceInfo:
    device: torch.device
    dtype: torch.dtype
    reason: str

    @property
    def dtype_name(self) -> str:
        return {v: k for k, v in DTYPES.items()}[self.dtype]

    def autocast(self) -> torch.autocast:
        """Matmuls in the compute dtype. Without autocast's cache of cast weights: it keeps a bf16 copy of
        every fp32 weight until the forward pass ends (270 MB for full fine-tuning of SmolLM2-135M) and
        saves no work here, since each weight is cast once per forward either way (and again when
        checkpointed layers recompute, which happens outside that forward)."""
        enabled = self.dtype != torch.float32
        return torch.autocast(device_type=self.device.type, dtype=self.dtype, enabled=enabled, cache_enabled=False)


@functools.cache
def cpu_flags() -> frozenset[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_has_fast_bf16() -> bool:
    return bool({"avx512_bf16", "amx_bf16"} & cpu_flags())


def pick_device(dtype: DtypeName = "auto", device: str | None = None) -> DeviceInfo:
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dtype != "auto":
        return DeviceInfo(dev, DTYPES[dtype], "set in the config")
    if dev.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return DeviceInfo(dev, torch.bfloat16, "GPU supports bf16")
        return DeviceInfo(dev, torch.float32, "GPU without bf16")
    if cpu_has_fast_bf16():
        return DeviceInfo(dev, torch.bfloat16, "CPU has native bf16 matmul (AVX-512 BF16 / AMX)")
    return DeviceInfo(dev, torch.float32, "CPU without native bf16")


def physical_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


# glibc's malloc, left alone, raises its mmap threshold to the largest block freed so far (up to 32 MB),
# so after the first step every activation comes from heap arenas, which fragment and rarely shrink:
# measured at LoRA's peak, 500 MB of an 870 MB arena was free. With the threshold fixed at 16 MB only the
# large blocks (attention scores of long batches, logits pieces, embedding gradients) are mapped, and
# given back when freed; the many smaller ones keep the heap's fast reuse. (glibc's own fixed value,
# 128 KB, maps every activation afresh and made training 2.6x slower.)
MMAP_THRESHOLD = 16 << 20
# oneDNN keeps each compiled matmul primitive, a set per batch shape: ~13 MB more for every new padded
# length, up to 1024 primitives. 64 holds the shapes of the current steps; no slowdown was measurable.
ONEDNN_PRIMITIVE_CACHE = 64
# PyTorch's ideep layer keeps a second cache in front of oneDNN's, of whole matmul computations, keyed by
# shape too, and 1024 entries deep by default (env LRU_CACHE_CAPACITY): another ~6 MB for every new padded
# length, which held no step's memory but every later one's (a 30-step LoRA run grew by ~4 MB a step).
IDEEP_COMPUTATION_CACHE = 32
_M_MMAP_THRESHOLD = -3


def tune_cpu(threads: int | None = None) -> int:
    """One intra-op thread per core we may run on: hyper-threads only contend for the same units. Also
    bounds the allocator's and oneDNN's caches, which otherwise grow with every batch shape a long
    training run meets."""
    threads = threads or physical_cores()
    torch.set_num_threads(threads)
    os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", str(ONEDNN_PRIMITIVE_CACHE))  # read at first use
    os.environ.setdefault("LRU_CACHE_CAPACITY", str(IDEEP_COMPUTATION_CACHE))  # likewise
    libc = _glibc()
    if libc is not None:
        libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    return threads


# Tokens up to which a server's engine step runs on one intra-op thread (see `serving_threads`).
SINGLE_THREAD_TOKENS = 2


def serving_threads(step_tokens: int, configured: int) -> int:
    """Intra-op threads for an engine step that computes `step_tokens` tokens (one per decoding row, a whole
    prompt per prefilling one) while a server's own threads also need the CPU.

    Each streamed token wakes the HTTP side (a request thread, the event loop, the socket write), and an
    intra-op worker that loses its core to them holds every parallel region of the step at its barrier. A
    decode step of one or two rows is bound by memory bandwidth, which one thread nearly saturates (prepacked
    bf16 weights: one pass in 10.2 against 9.3 ms with 2 threads), so such steps leave the other cores to the
    server. Measured with one streamed client on 2 cores (bench/latency.py): 60 ms per token with 2 threads,
    24 with this. Prefills and larger batches are compute-bound and get every thread."""
    return 1 if step_tokens <= SINGLE_THREAD_TOKENS else configured


def release_free_memory() -> None:
    """Hand the heap's free pages back to the system (glibc keeps them otherwise, fragmented between live
    blocks); called between training steps, so the next step's peak starts from what is really in use."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


def peak_rss_mb() -> float:
    """This process's peak resident memory. Linux's VmHWM belongs to the process image, whereas
    getrusage's ru_maxrss survives exec: a `tunekit train` started from a 2 GB notebook or benchmark
    would report at least 2 GB. (ru_maxrss is in KB on Linux, bytes on macOS.)"""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (2**20 if sys.platform == "darwin" else 1024), 1)


def peak_gpu_mb() -> float | None:
    """Peak memory torch's CUDA allocator handed out in this process (None where CUDA was not used)."""
    if not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return None
    return round(torch.cuda.max_memory_allocated() / 2**20, 1)


@functools.cache
def _glibc() -> object | None:
    import ctypes
    import platform

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    return ctypes.CDLL("libc.so.6")


def attention_implementation(info: DeviceInfo, choice: str = "auto") -> str:
    """Eager attention on CPU: at fine-tuning lengths (hundreds of tokens) its plain matmuls use the
    fast bf16 kernels, while torch's CPU flash-attention backward measured ~15% slower per step here.
    SDPA everywhere else."""
    if choice != "auto":
        return choice
    return "eager" if info.device.type == "cpu" else "sdpa"
