//! A global allocator that maps very large allocations lazily.
//!
//! Request decoders pre-size arrays from the element count a client sends. A few bytes that
//! claim 2^31 elements ask for hundreds of GiB before the first element fails to decode, and a
//! failed allocation aborts the process. This allocator hands allocations of
//! [`LAZY_THRESHOLD_BYTES`] or more to `mmap(MAP_NORESERVE)`: the kernel reserves only address
//! space, pages are backed when first written, so such a claim costs nothing until real
//! elements arrive (and those are bounded by the request size). Everything smaller goes to the
//! system allocator unchanged.
//!
//! Limit: with `vm.overcommit_memory = 2` (strict accounting) the kernel ignores
//! `MAP_NORESERVE`, and an absurd claim still fails.

use std::alloc::{GlobalAlloc, Layout, System};
use std::ptr;

/// Allocations at least this large are mapped lazily.
pub const LAZY_THRESHOLD_BYTES: usize = 1 << 30;
const PAGE_BYTES: usize = 4096;

/// See the module documentation. Install with `#[global_allocator]`.
pub struct LazyHugeAlloc;

fn is_lazy(layout: &Layout) -> bool {
    layout.size() >= LAZY_THRESHOLD_BYTES && layout.align() <= PAGE_BYTES
}

unsafe fn map(size: usize) -> *mut u8 {
    // SAFETY: an anonymous private mapping with no address hint has no preconditions.
    let p = unsafe {
        libc::mmap(
            ptr::null_mut(),
            size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        ptr::null_mut()
    } else {
        p.cast()
    }
}

// SAFETY: every pointer handed out is either from `System` (small layouts) or from `mmap` with
// at least `size` bytes and page alignment (large layouts); `dealloc` and `realloc` tell the two
// apart by the layout's size, which callers must pass unchanged.
unsafe impl GlobalAlloc for LazyHugeAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if is_lazy(&layout) {
            // SAFETY: see `map`.
            unsafe { map(layout.size()) }
        } else {
            // SAFETY: forwarded with the caller's guarantees.
            unsafe { System.alloc(layout) }
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if is_lazy(&layout) {
            // Anonymous mappings are zero-filled.
            // SAFETY: see `map`.
            unsafe { map(layout.size()) }
        } else {
            // SAFETY: forwarded with the caller's guarantees.
            unsafe { System.alloc_zeroed(layout) }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if is_lazy(&layout) {
            // SAFETY: `ptr` came from `map` with this size.
            unsafe { libc::munmap(ptr.cast(), layout.size()) };
        } else {
            // SAFETY: forwarded with the caller's guarantees.
            unsafe { System.dealloc(ptr, layout) }
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller guarantees `new_size` with `layout.align()` is a valid layout.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        if !is_lazy(&layout) && !is_lazy(&new_layout) {
            // SAFETY: forwarded with the caller's guarantees.
            return unsafe { System.realloc(ptr, layout, new_size) };
        }
        // SAFETY: `new_layout` is valid (above); the copy stays within both blocks.
        unsafe {
            let new = self.alloc(new_layout);
            if !new.is_null() {
                ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                self.dealloc(ptr, layout);
            }
            new
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huge_claims_cost_only_address_space() {
        let a = LazyHugeAlloc;
        let layout = Layout::from_size_align(64 << 30, 8).unwrap();
        // SAFETY: a valid non-zero layout; the block is written within bounds and freed with
        // the same layout.
        unsafe {
            let p = a.alloc(layout);
            assert!(!p.is_null(), "a 64 GiB lazy mapping must succeed");
            *p = 7;
            *p.add((64 << 30) - 1) = 9;
            let small = a.realloc(p, layout, 16);
            assert_eq!(*small, 7);
            let big = a.realloc(
                small,
                Layout::from_size_align(16, 8).unwrap(),
                LAZY_THRESHOLD_BYTES,
            );
            assert_eq!(*big, 7);
            let small = a.realloc(
                big,
                Layout::from_size_align(LAZY_THRESHOLD_BYTES, 8).unwrap(),
                16,
            );
            assert_eq!(*small, 7);
            a.dealloc(small, Layout::from_size_align(16, 8).unwrap());
        }
    }
}
