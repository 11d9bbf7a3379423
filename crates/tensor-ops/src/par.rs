//! Parallel loops on candle's own CPU worker pool.
//!
//! candle runs its CPU ops on a barrier pool: the calling thread plus `threads − 1`
//! workers that spin for a while (~25,000 pause instructions) after each op before they
//! park. Our kernels used rayon's global pool, two *other* threads, so right after every
//! candle op three threads competed for two cores, and the calling thread slept while
//! rayon's worked. Running our loops on candle's pool keeps one set of threads busy: the
//! caller takes part, and the worker that is still spinning from the last candle op picks
//! the work up at once. rayon stays for everything off the hot path.

use std::any::Any;
use std::cell::Cell;
use std::panic::AssertUnwindSafe;
use std::sync::Mutex;

thread_local! {
    /// Set while this thread runs a [`for_each_index`] body: a nested call runs inline
    /// (candle's pool serializes callers with a lock that its calling thread holds).
    static INSIDE: Cell<bool> = const { Cell::new(false) };
}

/// `f(i)` for every `i < n`, spread over candle's pool (dynamic chunks).
pub(crate) fn for_each_index(n: usize, f: impl Fn(usize) + Sync) {
    if n == 0 {
        return;
    }
    if n == 1 || INSIDE.with(Cell::get) {
        (0..n).for_each(f);
        return;
    }
    // A panic must not unwind through candle's pool: it holds its call lock across the
    // call, and a poisoned lock fails every later candle CPU op of the process (the daemon
    // catches a job's panic and keeps serving). So each chunk catches its own, and the
    // first is resumed here, after the pool has let go.
    let panicked: Mutex<Option<Box<dyn Any + Send>>> = Mutex::new(None);
    candle_core::utils::barrier_pool().execute_chunked(n, |range| {
        let was = INSIDE.with(|c| c.replace(true));
        let run = std::panic::catch_unwind(AssertUnwindSafe(|| range.for_each(&f)));
        INSIDE.with(|c| c.set(was));
        if let Err(payload) = run {
            let mut first = panicked.lock().unwrap_or_else(|e| e.into_inner());
            first.get_or_insert(payload);
        }
    });
    if let Some(payload) = panicked.into_inner().unwrap_or_else(|e| e.into_inner()) {
        std::panic::resume_unwind(payload);
    }
}

/// The threads a loop is spread over: the caller and candle's pool workers.
pub(crate) fn threads() -> usize {
    candle_core::utils::barrier_pool().n_workers() + 1
}

/// `reduce` over `map(share)` for `share < shares`, the maps spread over candle's pool
/// (the reduction runs on the calling thread, in share order).
pub(crate) fn map_reduce<R: Send>(
    shares: usize,
    map: impl Fn(usize) -> R + Sync,
    reduce: impl FnMut(R, R) -> R,
) -> Option<R> {
    let out: Vec<Mutex<Option<R>>> = (0..shares).map(|_| Mutex::new(None)).collect();
    for_each_index(shares, |i| {
        let r = map(i);
        *out[i].lock().unwrap_or_else(|e| e.into_inner()) = Some(r);
    });
    out.into_iter()
        .filter_map(|m| m.into_inner().unwrap_or_else(|e| e.into_inner()))
        .reduce(reduce)
}

/// `f(item)` for every item, spread over candle's pool.
pub(crate) fn for_each<T: Sync>(items: &[T], f: impl Fn(&T) + Sync) {
    for_each_index(items.len(), |i| f(&items[i]));
}

/// A raw pointer that work items share: each writes a part no other item touches.
pub(crate) struct SendPtr<T>(pub(crate) *mut T);
impl<T> Clone for SendPtr<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for SendPtr<T> {}
// SAFETY: only used to write disjoint regions from different threads (see each use).
unsafe impl<T: Send> Send for SendPtr<T> {}
// SAFETY: as above.
unsafe impl<T: Send> Sync for SendPtr<T> {}

impl<T> SendPtr<T> {
    /// A method, not a field access, so that closures capture the `Sync` wrapper.
    pub(crate) fn get(self) -> *mut T {
        self.0
    }
}

/// `f(k, chunk)` for the `k`-th chunk of `chunk` elements of `data` (the last may be
/// shorter), spread over candle's pool.
pub(crate) fn for_chunks_mut<T: Send>(
    data: &mut [T],
    chunk: usize,
    f: impl Fn(usize, &mut [T]) + Sync,
) {
    let (len, chunk) = (data.len(), chunk.max(1));
    let p = SendPtr(data.as_mut_ptr());
    for_each_index(len.div_ceil(chunk), |k| {
        let start = k * chunk;
        let n = chunk.min(len - start);
        // SAFETY: chunk k covers start .. start + n ≤ len of `data`, which is borrowed
        // mutably for the whole call; distinct k give disjoint ranges.
        f(k, unsafe {
            std::slice::from_raw_parts_mut(p.get().add(start), n)
        })
    });
}

/// [`for_chunks_mut`] over two slices of one length at once: `f(k, a_chunk, b_chunk)`.
pub(crate) fn for_chunks_mut2<A: Send, B: Send>(
    a: &mut [A],
    b: &mut [B],
    chunk: usize,
    f: impl Fn(usize, &mut [A], &mut [B]) + Sync,
) {
    assert_eq!(
        a.len(),
        b.len(),
        "for_chunks_mut2: slices of different lengths"
    );
    let chunk = chunk.max(1);
    let pb = SendPtr(b.as_mut_ptr());
    for_chunks_mut(a, chunk, |k, ca| {
        // SAFETY: the same range of `b` as `ca` is of `a` (equal lengths, asserted);
        // `b` is borrowed mutably for the whole call and distinct k are disjoint.
        let cb = unsafe { std::slice::from_raw_parts_mut(pb.get().add(k * chunk), ca.len()) };
        f(k, ca, cb)
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn every_index_once_even_nested() {
        let hits: Vec<AtomicUsize> = (0..100).map(|_| AtomicUsize::new(0)).collect();
        for_each_index(10, |i| {
            for_each_index(10, |j| {
                hits[i * 10 + j].fetch_add(1, Ordering::Relaxed);
            })
        });
        assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
    }

    #[test]
    fn chunks_cover_the_slice() {
        let mut v = vec![0usize; 1001];
        for_chunks_mut(&mut v, 64, |k, c| c.iter_mut().for_each(|x| *x += k + 1));
        for (i, x) in v.iter().enumerate() {
            assert_eq!(*x, i / 64 + 1);
        }
    }

    #[test]
    fn paired_chunks_line_up() {
        let (mut a, mut b) = (vec![0usize; 300], vec![0usize; 300]);
        for_chunks_mut2(&mut a, &mut b, 64, |k, ca, cb| {
            for (i, (x, y)) in ca.iter_mut().zip(cb.iter_mut()).enumerate() {
                (*x, *y) = (k * 64 + i, 2 * (k * 64 + i));
            }
        });
        assert!((0..300).all(|i| a[i] == i && b[i] == 2 * i));
    }

    #[test]
    fn a_panicking_body_leaves_the_pool_usable() {
        // candle's pool must not be poisoned: its next op would fail.
        let r = std::panic::catch_unwind(|| for_each_index(4, |i| assert!(i != 2, "boom")));
        assert!(r.is_err());
        assert!(!INSIDE.with(Cell::get), "the nesting flag stayed set");
        let hits = AtomicUsize::new(0);
        for_each_index(8, |_| {
            hits.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(hits.load(Ordering::Relaxed), 8);
        // A candle op big enough to run on its pool still works.
        let t =
            candle_core::Tensor::ones(1 << 17, candle_core::DType::F32, &candle_core::Device::Cpu)
                .unwrap();
        let s: f32 = (&t + &t).unwrap().sum_all().unwrap().to_scalar().unwrap();
        assert_eq!(s, (2 << 17) as f32);
    }
}
