//! The allocator: mimalloc, and handing freed memory back to the operating system.
//!
//! This is the one module of the workspace allowed `unsafe`: mimalloc is a C library, called
//! directly for allocation ([`MiMalloc`]) and for `mi_collect`. Why the latter: when idle keep-alive connections are parked, hyper's buffers are
//! freed, but mimalloc only returns free pages to the OS lazily, on later allocator activity — an
//! idle proxy keeps the high-water mark as RSS. Collecting once a second after the proxy parked
//! connections returns those pages (measured: 23 KB → 10 KB per parked connection).

/// Returns free memory to the OS (a cheap no-op when there is none).
pub fn release_free_memory() {
    #[cfg(feature = "mimalloc")]
    #[allow(unsafe_code)]
    // SAFETY: `mi_collect` takes no pointers and may be called at any time from any thread;
    // `force = true` also purges pages freed moments ago (they are unused; mimalloc would otherwise wait).
    unsafe {
        libmimalloc_sys::mi_collect(true);
    }
}

/// mimalloc as the global allocator, asking it for alignment only when malloc's is not enough.
///
/// The `mimalloc` crate's allocator calls `mi_malloc_aligned` for every allocation, even with
/// an alignment of 1. mimalloc 3 serves that from its fast path only for blocks up to 1 KiB;
/// larger ones (hyper's and h2's read and write buffers, 4–16 KiB, several per request) take its
/// generic over-allocating path: ≈250 instructions instead of ≈40, 3 % of an HTTP/1.1 request
/// (BENCHMARKS.md). `mi_malloc` already aligns every block to its size class, and every class of
/// 16 bytes and more to 16 — the same rule the standard library's `System` allocator uses.
#[cfg(feature = "mimalloc")]
#[derive(Debug)]
pub struct MiMalloc;

/// What `mi_malloc` guarantees without being asked (`MI_MAX_ALIGN_SIZE`).
#[cfg(feature = "mimalloc")]
const MALLOC_ALIGN: usize = 16;

/// Whether a block of `size` bytes aligned to `align` needs no more than `mi_malloc` gives.
#[cfg(feature = "mimalloc")]
fn plain(align: usize, size: usize) -> bool {
    align <= MALLOC_ALIGN && align <= size
}

#[cfg(feature = "mimalloc")]
#[allow(unsafe_code)]
// SAFETY: every method hands mimalloc the layout's size (and alignment where `plain` does not
// already guarantee it) and frees with `mi_free`, which takes any mimalloc block; the callers'
// contracts (`GlobalAlloc`) are passed on unchanged.
unsafe impl std::alloc::GlobalAlloc for MiMalloc {
    #[inline]
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        use libmimalloc_sys as mi;
        unsafe {
            if plain(layout.align(), layout.size()) {
                mi::mi_malloc(layout.size()).cast()
            } else {
                mi::mi_malloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        use libmimalloc_sys as mi;
        unsafe {
            if plain(layout.align(), layout.size()) {
                mi::mi_zalloc(layout.size()).cast()
            } else {
                mi::mi_zalloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: std::alloc::Layout) {
        unsafe { libmimalloc_sys::mi_free(ptr.cast()) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        use libmimalloc_sys as mi;
        unsafe {
            if plain(layout.align(), new_size) {
                mi::mi_realloc(ptr.cast(), new_size).cast()
            } else {
                mi::mi_realloc_aligned(ptr.cast(), new_size, layout.align()).cast()
            }
        }
    }
}

#[cfg(all(test, feature = "mimalloc"))]
mod tests {
    use std::alloc::{GlobalAlloc, Layout};

    use super::MiMalloc;

    #[test]
    #[allow(unsafe_code)]
    fn every_block_has_its_layouts_alignment_and_survives_realloc() {
        // Sizes around mimalloc's size classes and its 1 KiB small-block limit, with every
        // alignment a Rust type may ask for up to a page.
        for size in [
            1usize, 8, 16, 24, 40, 100, 1000, 1024, 1100, 4000, 8200, 70_000,
        ] {
            for align in [1usize, 2, 4, 8, 16, 32, 64, 128, 4096] {
                let Ok(layout) = Layout::from_size_align(size, align) else {
                    continue;
                };
                // SAFETY: non-zero sizes, valid layouts, blocks freed once with the same layout.
                unsafe {
                    for zeroed in [false, true] {
                        let p = if zeroed {
                            MiMalloc.alloc_zeroed(layout)
                        } else {
                            MiMalloc.alloc(layout)
                        };
                        assert!(!p.is_null());
                        assert_eq!(p as usize % align, 0, "size {size} align {align}");
                        if zeroed {
                            assert!(std::slice::from_raw_parts(p, size).iter().all(|&b| b == 0));
                        }
                        p.write_bytes(0xab, size);
                        let grown = MiMalloc.realloc(p, layout, size * 3);
                        assert_eq!(
                            grown as usize % align,
                            0,
                            "realloc size {size} align {align}"
                        );
                        assert!(
                            std::slice::from_raw_parts(grown, size)
                                .iter()
                                .all(|&b| b == 0xab)
                        );
                        MiMalloc.dealloc(grown, Layout::from_size_align(size * 3, align).unwrap());
                    }
                }
            }
        }
    }
}
