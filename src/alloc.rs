//! The command's memory allocator: the system's, except that large blocks are mapped on their
//! own, 2 MiB-aligned, and marked for transparent huge pages.
//!
//! A check fills tens of megabytes of fresh memory besides the instruction list (side lists of
//! branches, symbols, per-function results, indexes), most of it in blocks of a megabyte or
//! more. From the C library's allocator each 4 KiB page of those costs a page fault when it is
//! first written: about 17 k faults per check of a distribution kernel, a tenth of its CPU time
//! on a virtual machine. On huge pages a block costs one fault per 2 MiB. Where transparent
//! huge pages are off (`never`), the advice is ignored and the blocks are ordinary mappings.

use std::alloc::{GlobalAlloc, Layout, System};

/// Blocks of at least this many bytes are mapped on their own.
const BIG: usize = 1 << 20;
/// The huge page size, and the granularity of the large blocks.
const HUGE: usize = 2 << 20;

/// See the module documentation.
pub struct HugeAlloc;

fn big(size: usize, align: usize) -> bool {
    size >= BIG && align <= HUGE
}

fn round_up(n: usize) -> usize {
    n.div_ceil(HUGE) * HUGE
}

/// A fresh mapping of `size` bytes (a multiple of [`HUGE`]), aligned to [`HUGE`], advised to
/// use huge pages; null if the kernel refuses it.
unsafe fn map(size: usize) -> *mut u8 {
    let Some(over) = size.checked_add(HUGE) else {
        return std::ptr::null_mut();
    };
    // SAFETY: an anonymous private mapping at an address of the kernel's choosing.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            over,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return std::ptr::null_mut();
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
    aligned as *mut u8
}

unsafe impl GlobalAlloc for HugeAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if big(layout.size(), layout.align()) {
            // SAFETY: `map` has no precondition beyond a size, rounded here.
            unsafe { map(round_up(layout.size())) }
        } else {
            // SAFETY: the caller's layout, passed on.
            unsafe { System.alloc(layout) }
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if big(layout.size(), layout.align()) {
            // SAFETY: as in `alloc`; a fresh anonymous mapping reads as zeros.
            unsafe { map(round_up(layout.size())) }
        } else {
            // SAFETY: the caller's layout, passed on.
            unsafe { System.alloc_zeroed(layout) }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if big(layout.size(), layout.align()) {
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
            (true, true) => {
                let (old, new) = (round_up(layout.size()), round_up(new_size));
                if old == new {
                    return ptr;
                }
                // SAFETY: `ptr` is a mapping of `old` bytes made by `map`; the kernel moves or
                // resizes it whole, keeping its contents. A moved mapping keeps 4 KiB
                // alignment only, enough for any layout `big` accepts up to a page; larger
                // alignments are copied instead.
                if align <= 4096 {
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
    /// zeroed blocks read as zeros; large blocks are huge-page aligned.
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
                    assert_eq!(p as usize % 4096, 0);
                }
                size = new;
            }
            a.dealloc(p, Layout::from_size_align(size, 8).unwrap());

            let layout = Layout::from_size_align(3 * BIG, 64).unwrap();
            let z = a.alloc_zeroed(layout);
            assert_eq!(z as usize % HUGE, 0);
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
}
