"""The process heap. glibc's malloc keeps what Python frees (a heap per thread, free chunks between live
ones) rather than giving it back to the system; after a burst (thousands of objects listed, decoded and
applied at start) RSS then stays near the peak. Two glibc knobs fix that: fewer per-thread heaps, and a
periodic trim. Elsewhere (musl, macOS) both do nothing."""

from __future__ import annotations

import ctypes
import ctypes.util

M_ARENA_MAX = -8  # mallopt parameter (malloc.h)
ARENAS = 2  # the event loop's and one for the broker threads (they allocate little)
TRIM_SECONDS = 30.0


def _glibc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")  # an image may have no ldconfig cache
        libc.malloc_trim  # noqa: B018 - only glibc has it
        libc.mallopt  # noqa: B018
    except (OSError, AttributeError):
        return None
    return libc


_LIBC = _glibc()


def available() -> bool:
    """Whether malloc is glibc's (the knobs below do something)."""
    return _LIBC is not None


def limit_arenas(arenas: int = ARENAS) -> bool:
    """Cap malloc's per-thread heaps (call before threads start); False where malloc is not glibc's."""
    return _LIBC is not None and bool(_LIBC.mallopt(M_ARENA_MAX, arenas))


def trim() -> bool:
    """Give free heap memory back to the system; True when some was."""
    return _LIBC is not None and bool(_LIBC.malloc_trim(0))
