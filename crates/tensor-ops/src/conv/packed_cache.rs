//! Packed forms of frozen kernels, kept across calls: a frozen network passes the same
//! weights every step, and packing a large kernel costs a good part of its forward.

use std::sync::{Arc, Mutex};

use candle_core::{Tensor, TensorId};

use super::geom::Geom;
use crate::gemm::Packed;

/// The id of a kernel that tracks no gradient (frozen weights), whose packed forms
/// [`PACKED`] may keep: candle tensors are immutable and ids are never reused.
pub(super) fn frozen_id(w: &Tensor) -> Option<TensorId> {
    (!w.track_op() && w.is_contiguous()).then(|| w.id())
}

/// A frozen kernel as one product sees it: its tensor's id, whether the product is the
/// data gradient (flipped kernel), and the kernel `(cout, cin, kh, kw)` as stored.
#[derive(Clone, Copy)]
pub(super) struct WeightKey<'a> {
    pub(super) id: TensorId,
    pub(super) flipped: bool,
    pub(super) w: &'a [f32],
}

/// Elements of a kernel compared on every cache hit ([`PackedCache`]).
const FINGERPRINT: usize = 64;

/// Bits of [`FINGERPRINT`] evenly spaced elements of `w`.
fn fingerprint(w: &[f32]) -> [u32; FINGERPRINT] {
    std::array::from_fn(|i| w.get(i * w.len() / FINGERPRINT).map_or(0, |v| v.to_bits()))
}

/// The most [`PACKED`] keeps, in bytes: a frozen VGG19 to `block5_conv2` packs ~160 MB
/// (forward and flipped), InceptionV3 to `Mixed_6c` less.
const PACKED_MAX_BYTES: usize = 256 << 20;

/// One cached packed kernel: `dims` are the product's `(cin, cout, kh, kw)`.
struct PackedEntry {
    id: TensorId,
    flipped: bool,
    dims: (usize, usize, usize, usize),
    addr: usize,
    len: usize,
    sample: [u32; FINGERPRINT],
    packed: Arc<Packed>,
}

impl PackedEntry {
    fn bytes(&self) -> usize {
        self.packed.data.len() * size_of::<f32>()
    }

    /// Whether this is `k`'s packed form for `g` with `rows` rows: the channels-last
    /// product's (`taps · cin`) or Winograd's transformed kernel (`36 · cin`). Which of
    /// the two a frozen 3×3 kernel takes depends on the map size, so one kernel can have
    /// both.
    fn is(&self, g: &Geom, k: &WeightKey<'_>, rows: usize) -> bool {
        self.id == k.id
            && self.flipped == k.flipped
            && self.dims == (g.cin, g.cout, g.kh, g.kw)
            && self.packed.k == rows
            && self.addr == k.w.as_ptr() as usize
            && self.len == k.w.len()
    }
}

/// Packed frozen kernels, least recently used first, at most [`PACKED_MAX_BYTES`].
/// Packing is `taps_major` and [`Packed::new`] over the whole kernel on every call: for a
/// 512 → 512 3×3 layer that is 9.4 MB transposed twice, ~24% of its forward at 16×24
/// pixels (measured with `perf`; cached, that forward took 5.7 instead of 10.7 ms), and
/// the data gradient flips the kernel first. A frozen network (style transfer's VGG,
/// DeepDream's Inception) passes the same kernels every step: cached, `oneiro bench
/// style-eval` went from 0.35 to 0.24 s and `dream-step` from 0.18 to 0.17 s. The id identifies the tensor; its storage address and a sample of its values
/// are checked as well, in case the storage is shared with a `Var` that `set` rewrote in
/// place (a detached copy of a trained weight).
pub(super) struct PackedCache(Mutex<Vec<PackedEntry>>);

pub(super) static PACKED: PackedCache = PackedCache(Mutex::new(Vec::new()));

/// Frozen kernels packed once and not cached yet, newest last. A kernel is cached the
/// second time it is packed: a frozen network passes the same tensors every step, while a
/// GAN's frozen discriminator detaches fresh tensors every step, which would otherwise
/// fill the cache with kernels no call asks for again.
static SEEN_ONCE: Mutex<Vec<(TensorId, bool)>> = Mutex::new(Vec::new());

/// How many once-packed kernels [`SEEN_ONCE`] remembers (ids only).
const SEEN_ONCE_MAX: usize = 4096;

/// Whether `k` was packed before; remembers it otherwise.
fn packed_before(k: &WeightKey<'_>) -> bool {
    let mut seen = SEEN_ONCE.lock().unwrap_or_else(|e| e.into_inner());
    let key = (k.id, k.flipped);
    if let Some(i) = seen.iter().position(|s| *s == key) {
        seen.remove(i);
        return true;
    }
    if seen.len() >= SEEN_ONCE_MAX {
        seen.remove(0);
    }
    seen.push(key);
    false
}

impl PackedCache {
    pub(super) fn get(&self, g: &Geom, k: &WeightKey<'_>, rows: usize) -> Option<Arc<Packed>> {
        let mut v = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let i = v.iter().position(|e| e.is(g, k, rows))?;
        if v[i].sample != fingerprint(k.w) {
            v.remove(i);
            return None;
        }
        let e = v.remove(i);
        let p = e.packed.clone();
        v.push(e);
        Some(p)
    }

    fn put(&self, g: &Geom, k: &WeightKey<'_>, packed: Arc<Packed>) {
        let e = PackedEntry {
            id: k.id,
            flipped: k.flipped,
            dims: (g.cin, g.cout, g.kh, g.kw),
            addr: k.w.as_ptr() as usize,
            len: k.w.len(),
            sample: fingerprint(k.w),
            packed,
        };
        if e.bytes() > PACKED_MAX_BYTES {
            return;
        }
        let rows = e.packed.k;
        let mut v = self.0.lock().unwrap_or_else(|e| e.into_inner());
        v.retain(|o| !o.is(g, k, rows));
        v.push(e);
        let mut total: usize = v.iter().map(PackedEntry::bytes).sum();
        while total > PACKED_MAX_BYTES {
            total -= v.remove(0).bytes();
        }
    }

    fn bytes(&self) -> usize {
        let v = self.0.lock().unwrap_or_else(|e| e.into_inner());
        v.iter().map(PackedEntry::bytes).sum()
    }

    fn clear(&self) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
}

/// The packed kernel of `g` with `rows` rows (the channels-last product's form or
/// Winograd's transformed one), from [`PACKED`] where the kernel is frozen (`key`), else
/// from `make` (whose result is cached when the kernel is packed a second time). The
/// lock is not held while packing, which runs on the thread pool.
pub(super) fn packed_weights(
    g: &Geom,
    key: Option<WeightKey<'_>>,
    rows: usize,
    make: impl FnOnce() -> Packed,
) -> Arc<Packed> {
    let Some(k) = key else {
        return Arc::new(make());
    };
    if let Some(p) = PACKED.get(g, &k, rows) {
        return p;
    }
    let p = Arc::new(make());
    if packed_before(&k) {
        PACKED.put(g, &k, p.clone());
    }
    p
}

/// Bytes of packed frozen kernels the convolutions keep between calls (at most
/// [`PACKED_MAX_BYTES`], 256 MiB), for a caller that accounts for the process's memory:
/// a frozen VGG19 to `block5_conv2` keeps ~160 MB here.
pub fn packed_cache_bytes() -> usize {
    PACKED.bytes()
}

/// Drops every cached packed kernel and forgets the kernels packed once, as when a frozen
/// network is unloaded: its tensors' ids never come back, so their entries would otherwise
/// stay until newer kernels evict them. Later calls pack and cache anew; results do not
/// change. The buffers go back to the recycled-buffer pool (bounded by its own limit), not
/// necessarily to the system; one that a running call still holds goes when it is done.
pub fn clear_packed_cache() {
    PACKED.clear();
    SEEN_ONCE.lock().unwrap_or_else(|e| e.into_inner()).clear();
}
