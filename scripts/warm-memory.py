#!/usr/bin/env python3
"""Touches and frees memory, so that the next run starts on memory the machine has backed.

usage: warm-memory.py MB

Maps MB megabytes of anonymous memory, writes to every page, and exits (which frees them).
bench.sh runs it before each timed run of the scaling benchmark.

Why: a virtual machine with free page reporting (virtio-balloon; Firecracker's guests have it,
`page_reporting.page_reporting_order` on the kernel command line) hands memory that stays free
for about two seconds back to its host. The first write to such memory then costs a fault in the
host as well as in the guest. On the machine the benchmarks were first run on, a check of the
256 MB synthetic image spent 0.5-1.3 s in the kernel when the previous check had freed its
memory just before, and 1.9-3.3 s after a three-second pause (user time the same), while a
check of the 16 MB image, which fits in what any run just freed, almost never paid it. Measured
without this, the large image's time per MB included a cost of the host that the small ones
escaped. With it, every timed run starts from memory just freed, as consecutive runs do.
"""
import mmap
import sys

PAGE = 4096


def main():
    size = int(sys.argv[1]) << 20
    m = mmap.mmap(-1, size)
    if hasattr(mmap, "MADV_HUGEPAGE"):
        m.madvise(mmap.MADV_HUGEPAGE)  # as stackval's large blocks are
    for off in range(0, size, PAGE):
        m[off] = 1
    m.close()


if __name__ == "__main__":
    sys.exit(main())
