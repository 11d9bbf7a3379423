//! Recycled `f32` buffers for the CPU kernels.
//!
//! A training step of the fused LSTM needs the same few multi-megabyte buffers every time
//! (saved activations, cell states, gate gradients, packing scratch). Allocated fresh,
//! each one is zeroed by `calloc` (a memset of memory the allocator recycled) or
//! page-faulted in (memory it mapped anew), although the kernels overwrite nearly all of
//! it: together ~6% of a training step. Here a buffer goes back to a small global pool
//! when its [`PoolVec`] is dropped and is handed out again, stale contents and all, to
//! the next request of a similar size.
//!
//! Stale contents are ordinary initialised `f32`s, so there is no unsafety, only a
//! contract: whoever takes a buffer with [`take`] must write every element before
//! reading it. Under `cfg(test)` [`take`] fills buffers with NaN, so that a kernel which
//! reads an element it did not write fails its tests instead of silently depending on
//! what the previous user left there.
//!
//! The convolutions' work items, many and small, take their buffers from [`scratch`]
//! instead: a few kept by each thread, without the pool's lock.

use std::ops::{Deref, DerefMut};
use std::sync::Mutex;

/// The most the pool keeps, in floats (256 MiB): about nine times what one training step
/// of the book's model (batch 128, T = 60, H = 128) cycles through, so the working set
/// of a few models in flight stays pooled, but an idle process holds a bounded amount
/// of memory.
const MAX_POOLED: usize = 64 << 20;

/// Free buffers, oldest first, and their total capacity in floats.
static POOL: Mutex<(Vec<Vec<f32>>, usize)> = Mutex::new((Vec::new(), 0));

/// The first `len` floats of a `Vec<f32>` that returns to the pool when dropped.
///
/// The vector itself keeps every element it ever initialised: shortening it on the way
/// back to the pool made the next, longer request zero-fill the regrown part again.
#[derive(Debug, Default)]
pub(crate) struct PoolVec {
    buf: Vec<f32>,
    len: usize,
}

impl Clone for PoolVec {
    fn clone(&self) -> Self {
        let mut v = PoolVec {
            buf: take_raw(self.len),
            len: self.len,
        };
        v.copy_from_slice(self);
        v
    }
}

impl Deref for PoolVec {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        &self.buf[..self.len]
    }
}

impl DerefMut for PoolVec {
    fn deref_mut(&mut self) -> &mut [f32] {
        &mut self.buf[..self.len]
    }
}

impl Drop for PoolVec {
    fn drop(&mut self) {
        give_back(std::mem::take(&mut self.buf));
    }
}

/// A buffer of `len` floats with unspecified contents: the caller must write every
/// element before reading it (tests poison the contents with NaN to check that).
pub(crate) fn take(len: usize) -> PoolVec {
    let mut v = PoolVec {
        buf: take_raw(len),
        len,
    };
    if cfg!(test) {
        v.fill(f32::NAN);
    }
    v
}

/// The smallest pooled buffer that holds `len` floats without wasting more than half of
/// itself (a huge buffer spent on a small request would force the next large request
/// to allocate), at least `len` long; a fresh allocation when there is none.
fn take_raw(len: usize) -> Vec<f32> {
    if len == 0 {
        return Vec::new();
    }
    let found = {
        let mut guard = POOL.lock().unwrap_or_else(|e| e.into_inner());
        let (bufs, total) = &mut *guard;
        let best = bufs
            .iter()
            .enumerate()
            .filter(|(_, b)| b.capacity() >= len && b.capacity() / 2 <= len)
            .min_by_key(|(_, b)| b.capacity())
            .map(|(i, _)| i);
        best.map(|i| {
            let b = bufs.remove(i);
            *total -= b.capacity();
            b
        })
    };
    match found {
        Some(mut v) => {
            // Only elements past the longest length it had are written here; the rest
            // keep their stale (initialised) values.
            if v.len() < len {
                v.resize(len, 0.0);
            }
            v
        }
        // `vec!` of zeros maps fresh memory lazily (calloc), cheaper than filling it.
        None => vec![0.0; len],
    }
}

/// Keeps `v` for reuse, dropping the oldest pooled buffers beyond [`MAX_POOLED`].
fn give_back(v: Vec<f32>) {
    let cap = v.capacity();
    if cap == 0 || cap > MAX_POOLED {
        return;
    }
    let evicted = {
        let mut guard = POOL.lock().unwrap_or_else(|e| e.into_inner());
        let (bufs, total) = &mut *guard;
        bufs.push(v);
        *total += cap;
        let mut evicted = Vec::new();
        while *total > MAX_POOLED {
            let old = bufs.remove(0);
            *total -= old.capacity();
            evicted.push(old);
        }
        evicted
    };
    // Freed outside the lock.
    drop(evicted);
}

/// A buffer of a work item, kept by its thread for the next item: the items of one call
/// are many and small (a 28×28 layer has over a hundred), and taking them from the
/// shared pool ([`take`]) made its lock a measurable cost. Contents are unspecified, as
/// with [`take`] (NaN under `cfg(test)`).
///
/// The buffer keeps the longest length it was ever given and derefs to the first `len`
/// floats: sizing it down and up again by `Vec::resize` zero-filled the regrown part
/// every time (the calls of one step ask for different sizes in turn), ~4% of a VAE step.
pub(crate) struct Scratch {
    buf: Vec<f32>,
    len: usize,
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Vec<Vec<f32>>> = const { std::cell::RefCell::new(Vec::new()) };
}

pub(crate) fn scratch(len: usize) -> Scratch {
    let mut buf = SCRATCH
        .with(|s| {
            // The smallest kept buffer that is long enough, else the longest.
            let mut s = s.borrow_mut();
            let i = (0..s.len())
                .filter(|&i| s[i].len() >= len)
                .min_by_key(|&i| s[i].len())
                .or_else(|| (0..s.len()).max_by_key(|&i| s[i].len()))?;
            Some(s.swap_remove(i))
        })
        .unwrap_or_default();
    if buf.len() < len {
        buf.resize(len, 0.0);
    }
    if cfg!(test) {
        buf[..len].fill(f32::NAN);
    }
    Scratch { buf, len }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let buf = std::mem::take(&mut self.buf);
        SCRATCH.with(|s| s.borrow_mut().push(buf));
    }
}

impl std::ops::Deref for Scratch {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        &self.buf[..self.len]
    }
}

impl std::ops::DerefMut for Scratch {
    fn deref_mut(&mut self) -> &mut [f32] {
        &mut self.buf[..self.len]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_have_the_requested_length() {
        for len in [0, 1, 17, 1000, 4096, 1001, 3] {
            let a = take(len);
            assert_eq!(a.len(), len);
            assert_eq!(a.clone().len(), len);
        }
    }

    #[test]
    fn a_returned_buffer_is_reused_and_the_pool_is_bounded() {
        // Far larger than any other test's buffers, so that tests running concurrently
        // cannot take it first.
        let len = 2_999_999;
        let mut a = take(len);
        a[0] = 1.0;
        let ptr = a.as_ptr();
        drop(a);
        let b = take(len - 5);
        assert_eq!(b.as_ptr(), ptr, "the pooled buffer was not reused");
        assert_eq!(b.len(), len - 5);
        drop(b);
        // Far too small a request for that buffer: a fresh one.
        assert_ne!(take(10).as_ptr(), ptr);
        let (bufs, total) = &*POOL.lock().unwrap();
        assert!(*total <= MAX_POOLED);
        assert_eq!(*total, bufs.iter().map(Vec::capacity).sum::<usize>());
    }
}
