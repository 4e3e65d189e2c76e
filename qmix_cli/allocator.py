"""Keep freed heap memory in the process on glibc, so CPU batches stop paying page faults.

glibc returns large freed blocks to the system (``munmap``, heap trimming) and the next batch faults them in
again, zero-filled. A CPU forward pass allocates activation buffers of tens of MB every batch, and that churn cost
a fifth of an audit's raw forward on our 2-core VM (training epochs gained less, within the VM's drift;
docs/decisions.md, "Eleventh round"). Raising the mmap and trim thresholds keeps those blocks in the heap for
reuse. The price is a process that keeps its peak heap until it exits, which a training or audit process reaches
anyway.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Mapping

# mallopt parameters (<malloc.h>).
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3
SETTINGS = {_M_MMAP_THRESHOLD: 1 << 30, _M_TRIM_THRESHOLD: (1 << 31) - 1, _M_TOP_PAD: 1 << 26}


def keep_freed_memory(*, environ: Mapping[str, str] | None = None) -> bool:
    """Raise glibc's mmap and trim thresholds for this process; returns whether they were set.

    Nothing is changed off glibc (macOS, Windows, musl) or when the user has tuned the allocator through any
    ``MALLOC_*`` environment variable or ``GLIBC_TUNABLES``: their settings win.
    """
    env = os.environ if environ is None else environ
    if any(key.startswith("MALLOC_") or key == "GLIBC_TUNABLES" for key in env):
        return False
    # confstr answers from libc itself; platform.libc_ver() would scan the interpreter binary at every start.
    try:
        if not os.confstr("CS_GNU_LIBC_VERSION"):
            return False
    except (AttributeError, ValueError, OSError):  # no confstr (Windows), or a libc without the name (musl, macOS)
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    return all(mallopt(param, value) == 1 for param, value in SETTINGS.items())
