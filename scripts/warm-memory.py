#!/usr/bin/env python3
"""Touches and frees memory, so that the next run starts on memory the machine has backed.

usage: warm-memory.py MB

Maps MB megabytes of anonymous memory, writes to every page, and exits (which frees them).
bench.sh runs it before each timed run of the scaling benchmark.

Why: a virtual machine with free page reporting (virtio-balloon; Firecracker's guests have it,
`page_reporting.page_reporting_order` on the kernel command line) hands memory that stays free
for about two seconds back to its host, and the first write to such memory then costs a fault
in the host as well as in the guest. On the machine the benchmarks were first run on, a check of
the 256 MB synthetic image (2.6 GB of memory) spent 1.9-3.7 s in the kernel, nearly all of it
clearing fresh pages, when its memory had been free for a few seconds, and 0.4-0.6 s right
after this script had touched and freed 2.7 GB; its user time was the same. A check of the
16 MB image fits in what any run just freed and almost never paid it, so measured without this
the large image's time per MB carried a cost of the host that the small ones escaped. With it,
every timed run starts from memory just freed, as consecutive runs of one command do.
"""
import mmap
import sys

PAGE = 4096


def main():
    size = int(sys.argv[1]) << 20
    # Private, as a process's heap is (an anonymous mmap is shared by default: shmem pages,
    # which take no transparent huge pages).
    m = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    if hasattr(mmap, "MADV_HUGEPAGE"):
        m.madvise(mmap.MADV_HUGEPAGE)  # as stackval's large blocks are
    for off in range(0, size, PAGE):
        m[off] = 1
    m.close()


if __name__ == "__main__":
    sys.exit(main())
