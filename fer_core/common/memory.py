"""Keep freed memory in the process: the CPU engine's largest lever, set when ``fer_core`` is imported.

A training step on the CPU allocates its activations (tens of MB per batch), frees them, and allocates them
again on the next step. glibc's malloc hands blocks above its mmap threshold (at most 32 MB, 128 KB to start)
back to the operating system on free and trims the top of its heap, so every step faults every page of its
activations in again: about 150,000 page faults per step for the seed MobileNet at batch 128, measured here.
Raising the mmap threshold and never trimming keeps that memory mapped and reused (0 faults per step once the heap
has grown to a step's size); the seed MobileNet then trained 3.2x faster on this 2-core CPU in the last ``bench``
run (it prints both, measured in one run).

Mechanisms, chosen by measurement (``bench`` and ``tests/test_memory.py``):

- in this process, ``mallopt`` at import time (it takes effect at once, for every thread and arena);
- in every process started from it (the queue's trainers, Ray workers started from here, the dashboard's
  jobs), the same settings as glibc's environment variables, so they hold from the child's first malloc.

Transparent huge pages for torch's large tensors (``THP_MEM_ALLOC_ENABLE=1``) were part of this until measured
alone: with them every page the heap still gives back is a 2 MB page, zeroed (and, under the kernel's usual
``defrag=madvise``, compacted) on each fault, and one-thread training ran slower (``bench --levers`` on this
2-core CPU, idle: without them 1.13x for the seed MobileNet, 1.18x for the MobileNetV2, 1.05x for the
ShuffleNetV2, 1.09x for the CNN). So they are left as torch leaves them (off); a user's own
``THP_MEM_ALLOC_ENABLE`` is kept.

The price: memory a process freed is kept for reuse rather than returned, so its resident size stays near
its peak. ``FER_MALLOC=default`` turns all of it off (for a comparison, or a machine short of memory).
Settings a user made already (the environment variables) are left as they are.
"""

from __future__ import annotations

import ctypes
import os
import sys

try:
    import resource
except ImportError:  # Windows: no page-fault counts
    resource = None

#: bytes: blocks below this come from the heap and are reused, never unmapped (glibc caps its own at 32 MB)
MMAP_THRESHOLD = 1 << 30
#: the heap's top is never trimmed: glibc reads this as a size (no top is that large); ``mallopt`` gets -1, its
#: documented "never". A 1 GB threshold was trimmed between epochs (evaluation frees more than that at once), and
#: the next epoch faulted its activations in again: 14,000-21,000 faults per step for the seed MobileNet
TRIM_THRESHOLD = 1 << 62
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameter numbers (malloc.h)

ENV = {
    "MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD),
    "MALLOC_TRIM_THRESHOLD_": str(TRIM_THRESHOLD),
}

_state: dict | None = None


def tune_allocator() -> dict:
    """Apply the settings above once per process (idempotent); returns what is in force, for summaries.

    Returns a dict: ``mode`` ("kept" = in force, "default" = turned off by ``FER_MALLOC=default``,
    "unsupported" = not glibc), ``mallopt`` (whether glibc accepted both thresholds here), ``thp`` (whether
    torch's huge-page setting is on for this process) and ``env`` (the variables children inherit).
    """
    global _state
    if _state is not None:
        return _state
    if os.environ.get("FER_MALLOC", "").strip().lower() == "default":
        _state = {"mode": "default", "mallopt": False, "thp": os.environ.get("THP_MEM_ALLOC_ENABLE") == "1", "env": {}}
        return _state
    thp = os.environ.get("THP_MEM_ALLOC_ENABLE") == "1"  # only a user's own setting (see above)
    for k, v in ENV.items():
        os.environ.setdefault(k, v)  # children start with them; a user's own setting stays
    ok = False
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None)  # the process itself: glibc's symbols, no library search
            ok = bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) & bool(libc.mallopt(_M_TRIM_THRESHOLD, -1))
        except (OSError, AttributeError):  # musl and others have no mallopt: their allocator, their rules
            ok = False
    _state = {"mode": "kept" if ok else "unsupported", "mallopt": ok, "thp": thp, "env": child_env()}
    return _state


def child_env() -> dict:
    """The allocator variables a child process should start with (empty when turned off)."""
    if os.environ.get("FER_MALLOC", "").strip().lower() == "default":
        return {}
    return {k: os.environ.get(k, v) for k, v in ENV.items()}


def page_faults() -> int | None:
    """Minor page faults of this process so far (memory handed back and faulted in again); None off Unix."""
    if resource is None:
        return None
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
