"""glibc malloc for training: fixed mmap and trim thresholds instead of glibc's sliding ones.

glibc serves a block of 128 KiB or more with mmap, and every time such a block is freed it
raises that threshold to the block's size (up to 32 MiB) and the trim threshold to twice
that. The CNN's activations and gradients are such blocks (9 MiB per layer at batch 64),
allocated and freed at every step. As the thresholds slide, some of those blocks come from
the heap instead, and (our reading; not traced) the heap keeps what fragmentation pins
there: of 11 one-epoch CNN train stages on 60,000 images, 4 peaked 20 to 570 MiB above the
usual resident size, past the 1 GiB target. Fixing the thresholds at the values the
sliding scheme tends to (32 MiB mmap, 64 MiB trim) from the start removed the spikes in
bench/train_memory.py's runs, and the epoch got no slower (README, Memory). Other C
libraries are left alone.
"""

from __future__ import annotations

import ctypes
import os

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt parameters, from glibc's <malloc.h>


def is_glibc() -> bool:
    try:
        return os.confstr("CS_GNU_LIBC_VERSION") is not None
    except (ValueError, OSError, AttributeError):  # not glibc, or no confstr at all (Windows)
        return False


def fix_malloc_thresholds(mmap_bytes: int = 32 << 20, trim_bytes: int = 64 << 20) -> bool:
    """Set glibc's mmap and trim thresholds (which also stops them sliding). Returns whether
    they were set: False on any other C library, where nothing is changed."""
    if not is_glibc():
        return False
    libc = ctypes.CDLL(None)  # this process's own symbols, glibc's mallopt among them
    return bool(libc.mallopt(M_MMAP_THRESHOLD, mmap_bytes) and libc.mallopt(M_TRIM_THRESHOLD, trim_bytes))
