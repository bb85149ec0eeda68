"""Giving memory back between the big measurements of check-model.

Each measurement (the identity forward, the backward, the numerics passes, the persistence
round trip with its fresh copy of the model) allocates activations the size of a training
step's, then frees them. Freed is not returned: reference cycles (autograd graphs, PEFT's
modules) wait for the cyclic collector, and glibc keeps freed heap pages, so the next
measurement's peak stacks on top of the last one's leftovers. Measured on SmolLM2-135M
(bench/bench_memory.py), releasing after each measurement takes the whole check-model
process's peak from about 1.3x to about 1.1x that of a process running one training step.

A full collection walks every object the process tracks (about 500,000 with torch,
transformers and a PEFT model loaded: 0.27 s each time on a 2-core CPU). The cycles worth
collecting are the measurement's own, so the objects that existed before the outermost
measurement began are frozen for its duration (`gc.freeze`) and the collection at its end
walks only what it created; they are unfrozen afterwards, back in the oldest generation.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import sys

_LIBC = None
_DEPTH = 0  # measurements under way (they nest): the outermost one freezes and unfreezes


def _libc():
    global _LIBC
    if _LIBC is None:
        _LIBC = False
        if sys.platform.startswith("linux"):
            try:
                lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
                _LIBC = lib if hasattr(lib, "malloc_trim") else False
            except OSError:
                pass
    return _LIBC


def release() -> None:
    """Collect reference cycles now and hand freed heap pages back to the OS (glibc)."""
    gc.collect()
    libc = _libc()
    if libc:
        libc.malloc_trim(0)


def releasing(fn):
    """Decorate a measurement so that `release()` runs when it returns (or raises), collecting
    only the objects created since the outermost measurement began."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        global _DEPTH
        # A process that froze objects itself keeps them frozen: it gets full collections.
        outermost = _DEPTH == 0 and gc.get_freeze_count() == 0
        if outermost:
            gc.freeze()
        _DEPTH += 1
        try:
            return fn(*args, **kwargs)
        finally:
            _DEPTH -= 1
            release()
            if outermost:
                gc.unfreeze()
    return wrapper
