"""Process-level settings that make CPU training faster."""

from __future__ import annotations

import ctypes
import sys

_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3


def keep_freed_memory() -> bool:
    """Asks glibc's malloc to keep freed memory instead of returning it to the system at once.

    Activations of a CPU batch are tens of MB; by default glibc serves each from a fresh ``mmap`` and unmaps it when
    freed, so every layer of every step pays page faults (measured here: ResNet-32 evaluation at batch 512 ran at
    485 images/s, 1,006 with this setting). Peak memory is unchanged; the process just keeps it. Returns whether
    the setting took effect (False off Linux/glibc).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    # Activations of a 512-image ResNet-32 batch exceed 32 MiB; older glibc caps the threshold there.
    ok = libc.mallopt(_M_MMAP_THRESHOLD, 1 << 30) or libc.mallopt(_M_MMAP_THRESHOLD, 32 << 20)
    ok &= libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30)
    ok &= libc.mallopt(_M_TOP_PAD, 64 << 20)
    return bool(ok)
