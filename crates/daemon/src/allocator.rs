//! How long the binaries' allocator (mimalloc) keeps freed memory before giving it back.

use std::ffi::{c_int, c_long};

/// `mi_option_purge_delay` in mimalloc's `mi_option_e` (the same index in v2 and v3);
/// libmimalloc-sys names only some of the options.
const MI_OPTION_PURGE_DELAY: c_int = 15;

/// Milliseconds freed memory stays with the process.
///
/// Every training, dream or style step frees and re-allocates the same few hundred MiB
/// of activations and gradients. With mimalloc's own delay the memory went back to the
/// OS between steps and came back as fresh pages the kernel had to zero: a 299×299 dream
/// step took 12,738 page faults per 8 steps and spent ~15% of its time in `clear_page`
/// (184 → 162 ms a step, same machine, interleaved runs). The delay is not "since the
/// last free": at 10 s a GAN step (2.6 s) still faulted 11,140 times in 4 steps, at 60 s
/// 940 (as with purging off). A minute keeps memory through a job and still returns it
/// once the daemon idles.
pub const PURGE_DELAY_MS: c_long = 60_000;

/// Applies [`PURGE_DELAY_MS`] unless the user set `MIMALLOC_PURGE_DELAY` themselves.
/// Call it first thing in `main` of a binary whose global allocator is mimalloc.
pub fn keep_freed_memory() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets one integer option; mimalloc reads it on every purge decision.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS) };
    }
}
