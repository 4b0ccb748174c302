//! The command's memory allocator: the system's, except that large blocks come from one
//! region of address space reserved at the first of them and marked for transparent huge pages.
//!
//! A check fills tens of megabytes of fresh memory besides the instruction list (side lists of
//! branches, symbols, per-function results, indexes), most of it in blocks of a megabyte or
//! more. From the C library's allocator each 4 KiB page of those costs a page fault when it is
//! first written: about 17 k faults per check of a distribution kernel, a tenth of its CPU time
//! on a virtual machine. On huge pages a block costs one fault per 2 MiB.
//!
//! The blocks are cut from the region one after another (a bump allocator; freed memory goes
//! back to the system, its address range is not used again) rather than mapped one by one:
//! - no system call per block. Each `mmap` and `munmap` takes the process's memory-map lock
//!   for writing, and so waits for, and then holds up, the page faults other threads are taking
//!   in the meantime (a fault that clears a huge page the hypervisor has to back anew takes
//!   milliseconds): 3–4 ms of a 6.1 check's worker time was spent blocked there;
//! - no rounding of each block up to whole huge pages: consecutive blocks share them.
//!
//! Where the region cannot be reserved (a limit on address space, strict overcommit) or is
//! used up, each large block is mapped on its own as before. Where transparent huge pages are
//! off (`never`), the advice is ignored and the memory is ordinary pages.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

/// Blocks of at least this many bytes are large blocks.
const BIG: usize = 1 << 20;
/// The huge page size.
const HUGE: usize = 2 << 20;
/// The page size: large blocks are whole pages.
const PAGE: usize = 4096;
/// Address space reserved for large blocks: address space only (`MAP_NORESERVE`), used up by
/// every block a run ever takes, freed or not. A check of a 256 MB synthetic image takes a few
/// gigabytes over its run.
const REGION: usize = 64 << 30;

/// See the module documentation.
pub struct HugeAlloc;

fn big(size: usize, align: usize) -> bool {
    size >= BIG && align <= HUGE
}

fn round_up(n: usize) -> usize {
    n.div_ceil(HUGE) * HUGE
}

/// A large block's length in the region: whole pages.
fn block_len(n: usize) -> usize {
    n.next_multiple_of(PAGE)
}

/// The region's start (huge-page aligned), reserved at the first call; `None` if it could
/// not be.
fn region() -> Option<usize> {
    static START: OnceLock<Option<usize>> = OnceLock::new();
    // SAFETY: `map` has no precondition beyond a size that is a multiple of HUGE.
    *START.get_or_init(|| Some(unsafe { map(REGION, libc::MAP_NORESERVE) }).filter(|&p| p != 0))
}

/// Offset in the region of its first byte no block has taken.
static TOP: AtomicUsize = AtomicUsize::new(0);

/// A new block of `len` bytes (whole pages) aligned to `align` from the region; null when there
/// is no region or it has no room left.
fn take(len: usize, align: usize) -> *mut u8 {
    let Some(start) = region() else {
        return std::ptr::null_mut();
    };
    let mut top = TOP.load(Ordering::Relaxed);
    loop {
        // The region's start is huge-page aligned: an aligned offset is an aligned address.
        let at = top.next_multiple_of(align.max(PAGE));
        let Some(end) = at.checked_add(len).filter(|&e| e <= REGION) else {
            return std::ptr::null_mut();
        };
        match TOP.compare_exchange_weak(top, end, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return (start + at) as *mut u8,
            Err(now) => top = now,
        }
    }
}

/// Whether `p` lies in the region.
fn in_region(p: *mut u8) -> bool {
    region().is_some_and(|start| (p as usize).wrapping_sub(start) < REGION)
}

/// Gives back to the system the huge pages wholly inside `[from, to)` of the region: those at
/// its ends may hold other blocks. The range is never handed out again, so nothing needs to be
/// read from it any more.
fn release(from: usize, to: usize) {
    let (lo, hi) = (from.next_multiple_of(HUGE), to / HUGE * HUGE);
    if hi > lo {
        // SAFETY: the pages belong to the region and to no live block.
        unsafe { libc::madvise(lo as *mut libc::c_void, hi - lo, libc::MADV_DONTNEED) };
    }
}

/// A fresh mapping of `size` bytes (a multiple of [`HUGE`]) with the extra `flags`, aligned to
/// [`HUGE`], advised to use huge pages; null if the kernel refuses it.
unsafe fn map(size: usize, flags: libc::c_int) -> usize {
    let Some(over) = size.checked_add(HUGE) else {
        return 0;
    };
    // SAFETY: an anonymous private mapping at an address of the kernel's choosing.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            over,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | flags,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return 0;
    }
    let start = p as usize;
    let aligned = round_up(start);
    // SAFETY: both trimmed ranges lie inside the mapping just made and are not used.
    unsafe {
        if aligned > start {
            libc::munmap(p, aligned - start);
        }
        let tail = start + over - (aligned + size);
        if tail > 0 {
            libc::munmap((aligned + size) as *mut libc::c_void, tail);
        }
        libc::madvise(aligned as *mut libc::c_void, size, libc::MADV_HUGEPAGE);
    }
    aligned
}

/// A large block: from the region, or else mapped on its own (`round_up(size)` bytes). Fresh
/// memory either way, so it reads as zeros.
fn large(size: usize, align: usize) -> *mut u8 {
    let p = take(block_len(size), align);
    if !p.is_null() {
        return p;
    }
    // SAFETY: `map` has no precondition beyond a size, rounded here.
    unsafe { map(round_up(size), 0) as *mut u8 }
}

/// Sets the C library's allocator, which takes the blocks below [`BIG`], to grow and shrink its
/// heaps in large steps and to map no block on its own: by default each worker thread's heap
/// grows a few pages at a time (about 400 `mprotect` calls in a check of a distribution
/// kernel) and blocks from 128 KiB are mapped and unmapped one by one, each such call taking
/// the memory-map lock that page faults on other threads wait for (see the module
/// documentation). The heaps' reserve is address space until written.
pub fn tune_system_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets parameters, before any thread has started.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, BIG as libc::c_int);
        libc::mallopt(libc::M_TOP_PAD, (16 << 20) as libc::c_int);
        libc::mallopt(libc::M_TRIM_THRESHOLD, (64 << 20) as libc::c_int);
    }
}

unsafe impl GlobalAlloc for HugeAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if big(layout.size(), layout.align()) {
            large(layout.size(), layout.align())
        } else {
            // SAFETY: the caller's layout, passed on.
            unsafe { System.alloc(layout) }
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if big(layout.size(), layout.align()) {
            // Never used before: zeros.
            large(layout.size(), layout.align())
        } else {
            // SAFETY: the caller's layout, passed on.
            unsafe { System.alloc_zeroed(layout) }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if big(layout.size(), layout.align()) {
            if in_region(ptr) {
                release(ptr as usize, ptr as usize + block_len(layout.size()));
                return;
            }
            // SAFETY: `ptr` came from `map` with this rounded size (the layout is the one it was
            // allocated or last reallocated with).
            unsafe { libc::munmap(ptr.cast(), round_up(layout.size())) };
        } else {
            // SAFETY: `ptr` came from `System` with this layout.
            unsafe { System.dealloc(ptr, layout) }
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let align = layout.align();
        match (big(layout.size(), align), big(new_size, align)) {
            // SAFETY: `ptr` came from `System` with this layout.
            (false, false) => unsafe { System.realloc(ptr, layout, new_size) },
            (true, true) if in_region(ptr) => {
                let (old, new) = (block_len(layout.size()), block_len(new_size));
                let at = ptr as usize;
                if new <= old {
                    release(at + new, at + old);
                    return ptr;
                }
                // The last block taken grows in place.
                let start = region().expect("a block in the region");
                let (top, end) = (at + old - start, at + new - start);
                if end <= REGION
                    && TOP
                        .compare_exchange(top, end, Ordering::Relaxed, Ordering::Relaxed)
                        .is_ok()
                {
                    return ptr;
                }
                // SAFETY: as in the last arm.
                unsafe { self.moved(ptr, layout, new_size) }
            }
            (true, true) => {
                let (old, new) = (round_up(layout.size()), round_up(new_size));
                if old == new {
                    return ptr;
                }
                // SAFETY: `ptr` is a mapping of `old` bytes made by `map`; the kernel moves or
                // resizes it whole, keeping its contents. A moved mapping keeps 4 KiB
                // alignment only, enough for any layout `big` accepts up to a page; larger
                // alignments are copied instead.
                if align <= PAGE {
                    let p = unsafe { libc::mremap(ptr.cast(), old, new, libc::MREMAP_MAYMOVE) };
                    if p == libc::MAP_FAILED {
                        return std::ptr::null_mut();
                    }
                    unsafe { libc::madvise(p, new, libc::MADV_HUGEPAGE) };
                    return p.cast();
                }
                // SAFETY: as in the arm below.
                unsafe { self.moved(ptr, layout, new_size) }
            }
            // SAFETY: the caller's promises, passed on.
            _ => unsafe { self.moved(ptr, layout, new_size) },
        }
    }
}

impl HugeAlloc {
    /// `realloc` by a new block, a copy and the old block's release.
    ///
    /// # Safety
    /// As for [`GlobalAlloc::realloc`].
    unsafe fn moved(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller guarantees a valid non-zero `new_size` for this alignment.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        // SAFETY: as above.
        let p = unsafe { self.alloc(new_layout) };
        if !p.is_null() {
            // SAFETY: both blocks are live, distinct, and at least this long.
            unsafe {
                std::ptr::copy_nonoverlapping(ptr, p, layout.size().min(new_size));
                self.dealloc(ptr, layout);
            }
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Blocks on both sides of the threshold, grown and shrunk across it, keep their contents;
    /// zeroed blocks read as zeros; large blocks are whole pages, in the region where there is
    /// one.
    #[test]
    fn blocks_keep_their_contents_across_the_threshold() {
        let a = HugeAlloc;
        unsafe {
            let layout = Layout::from_size_align(1000, 8).unwrap();
            let mut p = a.alloc(layout);
            assert!(!p.is_null());
            for i in 0..1000 {
                *p.add(i) = i as u8;
            }
            let mut size = 1000;
            for new in [BIG - 1, BIG, 3 * BIG + 5, 9 * BIG, 5 * BIG, BIG + 1, 4000] {
                p = a.realloc(p, Layout::from_size_align(size, 8).unwrap(), new);
                assert!(!p.is_null());
                for i in 0..1000 {
                    assert_eq!(*p.add(i), i as u8, "byte {i} after growing to {new}");
                }
                // The whole new size is there to write (a short mapping would fault here).
                *p.add(new - 1) = 1;
                if big(new, 8) {
                    assert_eq!(p as usize % PAGE, 0);
                    assert_eq!(in_region(p), region().is_some());
                }
                size = new;
            }
            a.dealloc(p, Layout::from_size_align(size, 8).unwrap());

            let layout = Layout::from_size_align(3 * BIG, 64).unwrap();
            let z = a.alloc_zeroed(layout);
            assert_eq!(z as usize % PAGE, 0);
            assert!((0..layout.size()).step_by(4093).all(|i| *z.add(i) == 0));
            *z.add(layout.size() - 1) = 7;
            a.dealloc(z, layout);
        }
        // Through a Vec (the unit tests run on this allocator), as the check uses it.
        let mut v: Vec<u64> = Vec::new();
        for i in 0..1_000_000u64 {
            v.push(i);
        }
        assert!(v.iter().enumerate().all(|(i, &x)| x == i as u64));
        v.truncate(10);
        v.shrink_to_fit();
        assert_eq!(v, (0..10).collect::<Vec<u64>>());
    }

    /// Freeing a large block in the region gives its pages back without touching its
    /// neighbours' (which may share a huge page with it), a block freed there is never handed
    /// out again (a zeroed block reads as zeros wherever it lands), and a block asking for
    /// huge-page alignment gets it.
    #[test]
    fn freeing_in_the_region_spares_the_neighbours() {
        let a = HugeAlloc;
        let filled = |len: usize, byte: u8| unsafe {
            let layout = Layout::from_size_align(len, 8).unwrap();
            let p = a.alloc(layout);
            assert!(!p.is_null());
            std::ptr::write_bytes(p, byte, len);
            (p, layout)
        };
        unsafe {
            for round in 0..4 {
                // Odd lengths, so that the blocks' ends fall inside huge pages.
                let before = filled(BIG + 12_345, 0xa1);
                let middle = filled(3 * HUGE + 777, 0xb2);
                let after = filled(BIG + 4_321, 0xc3);
                a.dealloc(middle.0, middle.1);
                for (p, layout) in [before, after] {
                    let byte = if p == before.0 { 0xa1 } else { 0xc3 };
                    assert!(
                        (0..layout.size()).step_by(511).all(|i| *p.add(i) == byte),
                        "round {round}: a neighbour of the freed block changed"
                    );
                    assert_eq!(*p.add(layout.size() - 1), byte);
                }
                let zeroed = Layout::from_size_align(5 * HUGE, 8).unwrap();
                let z = a.alloc_zeroed(zeroed);
                assert!((0..zeroed.size()).step_by(4093).all(|i| *z.add(i) == 0));
                std::ptr::write_bytes(z, 0xff, zeroed.size());
                a.dealloc(z, zeroed);
                a.dealloc(before.0, before.1);
                a.dealloc(after.0, after.1);
            }
            let aligned = Layout::from_size_align(BIG, HUGE).unwrap();
            let p = a.alloc(aligned);
            assert_eq!(p as usize % HUGE, 0);
            a.dealloc(p, aligned);
        }
    }
}
