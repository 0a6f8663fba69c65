"""Memory settings and measurement for CPU training (the allocator and peak-RSS parts of tunekit.devices)."""

import os
import platform
import subprocess
import sys

import pytest

from tunekit.devices import peak_rss_mb, release_free_memory, tune_cpu

linux_glibc = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc on Linux only"
)


def rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


@pytest.mark.skipif(platform.system() != "Linux", reason="needs /proc")
def test_peak_rss_is_this_process_not_its_parent():
    """A child started from a large process reports its own peak, not the parent's (ru_maxrss would)."""
    ballast = bytearray(400 * 2**20)  # touched pages: the parent really holds 400 MB
    child = subprocess.run(
        [sys.executable, "-c", "import resource; from tunekit.devices import peak_rss_mb; "
         "print(peak_rss_mb(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)"],
        capture_output=True, text=True, check=True,
    )
    ours, inherited = map(float, child.stdout.split())
    assert ours < 300 < len(ballast) / 2**20
    assert ours <= inherited  # never more than the kernel's own (possibly inherited) figure
    assert peak_rss_mb() >= 400


@linux_glibc
def test_tune_cpu_bounds_caches_without_overriding_the_user():
    child = subprocess.run(
        [sys.executable, "-c", "import os; from tunekit.devices import tune_cpu; tune_cpu(1); "
         "print(os.environ['ONEDNN_PRIMITIVE_CACHE_CAPACITY'])"],
        capture_output=True, text=True, check=True, env={**os.environ, "ONEDNN_PRIMITIVE_CACHE_CAPACITY": "7"},
    )
    assert child.stdout.strip() == "7"
    assert tune_cpu(1) == 1
    assert os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"]


@linux_glibc
def test_release_free_memory_returns_fragmented_heap_pages():
    """Blocks below the mmap threshold live in the heap; freeing every other one leaves holes that glibc
    keeps resident until trimmed."""
    tune_cpu(1)
    blocks = [bytearray(2**20) for _ in range(300)]  # 1 MB each: heap, not mmap, under the 16 MB threshold
    del blocks[::2]  # 150 MB of holes between live blocks
    before = rss_mb()
    release_free_memory()
    after = rss_mb()
    assert before - after > 100, (before, after)
    del blocks
