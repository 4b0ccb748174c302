#!/usr/bin/env python3
"""Keeps a file's pages in memory while a benchmark times runs over it.

usage: pin-file.py FILE    (runs until terminated; prints "ready" once the file is in memory)

Maps FILE read-only and locks the mapping (mlock), so that the page cache cannot drop the pages
a timed run reads. Some virtual machines shrink their page cache continually: on the machine the
benchmarks were first run on, a 755 MB synthetic image read 20 seconds earlier came back partly
from disk, and the run that read it measured the disk. Where locking is not allowed (no
CAP_IPC_LOCK and a small RLIMIT_MEMLOCK), the file is still read once, and a note says that it
is not pinned.
"""
import ctypes
import os
import signal
import sys

PROT_READ, MAP_SHARED = 0x1, 0x01


def main():
    path = sys.argv[1]
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                          ctypes.c_int, ctypes.c_long]
    libc.mlock.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    fd = os.open(path, os.O_RDONLY)
    size = os.fstat(fd).st_size
    addr = libc.mmap(None, size, PROT_READ, MAP_SHARED, fd, 0)
    if addr in (None, ctypes.c_void_p(-1).value):
        print(f"pin-file: {path}: cannot map: {os.strerror(ctypes.get_errno())}", file=sys.stderr)
        return 1
    if libc.mlock(ctypes.c_void_p(addr), ctypes.c_size_t(size)) != 0:
        err = os.strerror(ctypes.get_errno())
        with open(path, "rb") as f:
            while f.read(1 << 24):
                pass
        print(f"pin-file: {path}: read once, not pinned ({err})", file=sys.stderr)
    print("ready", flush=True)
    # Wait, holding the lock, until the benchmark is done with the file.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    while True:
        signal.pause()


if __name__ == "__main__":
    sys.exit(main())
