//! A single-layer LSTM over a whole sequence, returning the last hidden state.
//!
//! candle's `LSTM::seq` builds ~15 graph nodes per time step and recomputes the input
//! projection each step, which makes training about 3× slower than PyTorch. Here the
//! input projection is a row gather from a `(vocab, 4H)` table (the same math as one-hot ×
//! W_ihᵀ + b), and the recurrence runs as one CPU kernel with a hand-written backward
//! (BPTT): each thread owns a slice of the batch for all time steps, so the steps need no
//! synchronisation, and the weight gradient is one large matmul at the end.
//!
//! On other devices (CUDA) the same function falls back to a composition of candle ops,
//! which autograd differentiates: every caller runs unchanged on `cuda:N`.
//!
//! Gate order is i, f, g, o (PyTorch, Keras and candle agree).

use std::sync::Mutex;

use candle_core::{CpuStorage, CustomOp3, DType, Device, Layout, Result, Shape, Tensor, bail};
use rayon::prelude::*;

use crate::buffers::{self, PoolVec};
use crate::fastmath;
use crate::gemm::small::{self, PackedRhs};

/// The last hidden state `(B, H)` of an LSTM run from zero state over `ids` `(B, T)`.
///
/// `table` is `(V, 4H)`: row `v` is `W_ih[:, v] + b_ih + b_hh`, i.e. the input
/// projection of a one-hot `v`. `w_hh` is `(4H, H)`. Gradients flow to `table` and
/// `w_hh`. `train = false` skips saving activations (inference, validation).
pub fn lstm_last_hidden(
    ids: &Tensor,
    table: &Tensor,
    w_hh: &Tensor,
    train: bool,
) -> Result<Tensor> {
    if table.device().is_cpu() && table.dtype() == DType::F32 && w_hh.dtype() == DType::F32 {
        let ids = ids.to_dtype(DType::U32)?.contiguous()?;
        ids.apply_op3(
            &table.contiguous()?,
            &w_hh.contiguous()?,
            LstmSeq::new(train),
        )
    } else {
        lstm_last_hidden_reference(ids, table, w_hh)
    }
}

/// The same function as [`lstm_last_hidden`], composed of plain candle ops (any device,
/// any float dtype, differentiable by candle's autograd). It is the GPU path and the
/// reference the fused kernel is tested against.
pub fn lstm_last_hidden_reference(ids: &Tensor, table: &Tensor, w_hh: &Tensor) -> Result<Tensor> {
    let (b, t) = ids.dims2()?;
    let (_, g) = table.dims2()?;
    let h = g / 4;
    let x = table
        .index_select(&ids.flatten_all()?, 0)?
        .reshape((b, t, g))?;
    let w_t = w_hh.t()?;
    let sigmoid = |x: Tensor| -> Result<Tensor> { (x.neg()?.exp()? + 1.0)?.recip() };
    let mut hs = Tensor::zeros((b, h), table.dtype(), table.device())?;
    let mut cs = hs.clone();
    for s in 0..t {
        let gates = (x.narrow(1, s, 1)?.squeeze(1)? + hs.matmul(&w_t)?)?;
        let i = sigmoid(gates.narrow(1, 0, h)?)?;
        let f = sigmoid(gates.narrow(1, h, h)?)?;
        let gg = gates.narrow(1, 2 * h, h)?.tanh()?;
        let o = sigmoid(gates.narrow(1, 3 * h, h)?)?;
        cs = ((f * cs)? + (i * gg)?)?;
        hs = (o * cs.tanh()?)?;
    }
    Ok(hs)
}

/// One thread's share of the batch: rows `b0 .. b0 + rows`, all time steps, laid out
/// step-major, `(T, rows, ·)`, so that one step of the share, and a run of consecutive
/// steps, is one contiguous row-major block (the per-step products read and write whole
/// blocks, and the weight gradient takes runs of steps as one product).
///
/// The large buffers come from the [`buffers`] pool and go back to it when the chunk is
/// dropped (after the backward, or at once without `train`): they are the same sizes at
/// every training step, and each is written in full before it is read, so reusing them skips
/// the zeroing and page faults of fresh allocations.
struct Chunk {
    b0: usize,
    rows: usize,
    /// Gate activations `[i, f, g, o]`, `(T, rows, 4H)`.
    acts: PoolVec,
    /// Cell states, `(T, rows, H)`.
    cs: PoolVec,
    /// `tanh(c)`, `(T, rows, H)`.
    tcs: PoolVec,
    /// Hidden state entering step t (zero at t = 0), `(T, rows, H)`.
    hprev: PoolVec,
    /// Final hidden state, `(rows, H)`.
    h_last: Vec<f32>,
}

struct Dims {
    t: usize,
    h: usize,
    v: usize,
}

impl Dims {
    fn g(&self) -> usize {
        4 * self.h
    }
}

impl Chunk {
    /// `w_hh_t` is `W_hhᵀ` `(H, 4H)`, packed.
    fn forward(
        b0: usize,
        rows: usize,
        d: &Dims,
        ids: &[u32],
        table: &[f32],
        w_hh_t: &PackedRhs,
    ) -> Chunk {
        let (t_len, h, g) = (d.t, d.h, d.g());
        // Every element of `acts` (a table row, then the activations), `cs` and `tcs` is
        // written at its step before anything reads it; of `hprev`, all but step 0 (the
        // zero initial state), which is zeroed here.
        let mut c = Chunk {
            b0,
            rows,
            acts: buffers::take(t_len * rows * g),
            cs: buffers::take(t_len * rows * h),
            tcs: buffers::take(t_len * rows * h),
            hprev: buffers::take(t_len * rows * h),
            h_last: vec![0.0; rows * h],
        };
        c.hprev[..rows * h].fill(0.0);
        let zeros = vec![0.0f32; h];
        for t in 0..t_len {
            let gates = &mut c.acts[t * rows * g..(t + 1) * rows * g];
            for (r, row) in gates.chunks_exact_mut(g).enumerate() {
                let id = ids[(b0 + r) * t_len + t] as usize;
                row.copy_from_slice(&table[id * g..(id + 1) * g]);
            }
            if t > 0 {
                // gates[r] += h_{t-1}[r] · W_hhᵀ
                // SAFETY: the rows × 4H gate block of step t (row stride 4H) and the
                // rows × H hidden block of step t (row stride H) end inside `acts` and
                // `hprev`, which are distinct buffers; W_hhᵀ is H × 4H as packed.
                unsafe {
                    small::gemm_packed(
                        rows,
                        gates.as_mut_ptr(),
                        g,
                        true,
                        c.hprev.as_ptr().add(t * rows * h),
                        h,
                        w_hh_t,
                    );
                }
            }
            let at = t * rows * h;
            let (cs_before, cs_t) = c.cs[..at + rows * h].split_at_mut(at);
            let c_prev = if t == 0 {
                None
            } else {
                Some(&cs_before[at - rows * h..])
            };
            let h_out = if t + 1 < t_len {
                &mut c.hprev[at + rows * h..at + 2 * rows * h]
            } else {
                &mut c.h_last[..]
            };
            for r in 0..rows {
                let hr = r * h..(r + 1) * h;
                fastmath::lstm_cell_forward(
                    &mut gates[r * g..(r + 1) * g],
                    c_prev.map_or(&zeros[..], |cp| &cp[hr.clone()]),
                    &mut cs_t[hr.clone()],
                    &mut c.tcs[at..][hr.clone()],
                    &mut h_out[hr],
                );
            }
        }
        c
    }

    /// BPTT for this share: returns its contributions to d(table) `(V, 4H)` and
    /// d(W_hh) `(4H, H)`. `w_hh` is `W_hh` `(4H, H)`, packed.
    ///
    /// The gate gradients of a run of steps (about [`small::KC`] rows in all) are
    /// kept in a block that stays in L2, and folded into dW_hh and d(table) when the run
    /// is complete: one product `dgatesᵀ · hprev` over the whole run, with operands that
    /// are still in cache. Kept for all steps instead (rows · T · 4H floats, 7.8 MB per
    /// thread for the book's model), the gradients went out to L3 and were read back
    /// twice, which cost ~6% of a training step; folded at every step instead, the
    /// product would have a depth of only `rows` (a few with many threads) for each
    /// pass over dW_hh.
    fn backward(
        &self,
        d: &Dims,
        ids: &[u32],
        w_hh: &PackedRhs,
        grad_h: &[f32],
    ) -> (Vec<f32>, Vec<f32>) {
        let (t_len, h, g, rows) = (d.t, d.h, d.g(), self.rows);
        // Steps per run: runs start at multiples of `run` (the last one, processed
        // first, may be shorter).
        let run = small::KC.div_ceil(rows).clamp(1, t_len);
        // `(run, rows, 4H)`: step t of the current run at slot t - start. Every slot of
        // a run is written by the cell backward before the run is folded.
        let mut dgates = buffers::take(run * rows * g);
        let mut dh = grad_h[self.b0 * h..(self.b0 + rows) * h].to_vec();
        let mut dc = vec![0.0f32; rows * h];
        let zeros = vec![0.0f32; h];
        let mut dw = vec![0.0f32; g * h];
        let mut dtable = vec![0.0f32; d.v * g];
        for start in (0..t_len).step_by(run).rev() {
            let steps = run.min(t_len - start);
            for t in (start..start + steps).rev() {
                let dg_t = &mut dgates[(t - start) * rows * g..][..rows * g];
                let at = t * rows * h;
                for r in 0..rows {
                    let hr = r * h..(r + 1) * h;
                    let c_prev = if t == 0 {
                        &zeros[..]
                    } else {
                        &self.cs[at - rows * h..at][hr.clone()]
                    };
                    fastmath::lstm_cell_backward(
                        &self.acts[t * rows * g..][r * g..(r + 1) * g],
                        c_prev,
                        &self.tcs[at..][hr.clone()],
                        &dh[hr.clone()],
                        &mut dc[hr],
                        &mut dg_t[r * g..(r + 1) * g],
                    );
                }
                if t > 0 {
                    // dh_{t-1} = dgates_t · W_hh
                    // SAFETY: the rows × 4H block of dgates at step t (row stride 4H) is
                    // `dg_t`; dh is rows × H (row stride H), a separate buffer; W_hh is
                    // 4H × H as packed.
                    unsafe {
                        small::gemm_packed(rows, dh.as_mut_ptr(), h, false, dg_t.as_ptr(), g, w_hh);
                    }
                }
            }
            // dW_hh += Σ_t dgates_tᵀ · h_{t-1} over the run: the run's blocks of dgates
            // and hprev are (steps · rows) × 4H and (steps · rows) × H, row-major.
            let k = steps * rows;
            // SAFETY: dgates read transposed as 4H × k (element (i, kk) at kk·4H + i) and
            // hprev from step `start` as k × H row-major are inside their buffers
            // (dgates holds `run ≥ steps` slots, hprev T·rows rows); dw is 4H × H
            // row-major and a separate allocation.
            unsafe {
                small::gemm_strided_lhs(
                    (g, h, k),
                    dw.as_mut_ptr(),
                    h,
                    true,
                    (dgates.as_ptr(), 1, g),
                    (self.hprev.as_ptr().add(start * rows * h), h),
                );
            }
            for t in start..start + steps {
                for r in 0..rows {
                    let id = ids[(self.b0 + r) * t_len + t] as usize;
                    let src = &dgates[((t - start) * rows + r) * g..][..g];
                    for (acc, &x) in dtable[id * g..(id + 1) * g].iter_mut().zip(src) {
                        *acc += x;
                    }
                }
            }
        }
        (dtable, dw)
    }
}

/// The fused CPU op behind [`lstm_last_hidden`]. Its forward keeps the activations that
/// its backward needs (when built with `train = true`).
pub struct LstmSeq {
    train: bool,
    saved: Mutex<Option<Vec<Chunk>>>,
}

impl LstmSeq {
    pub fn new(train: bool) -> Self {
        Self {
            train,
            saved: Mutex::new(None),
        }
    }
}

fn f32_slice<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    let Some((start, end)) = l.contiguous_offsets() else {
        bail!("lstm: {what} must be contiguous")
    };
    Ok(&s.as_slice::<f32>()?[start..end])
}

fn split_batch(b: usize) -> Vec<(usize, usize)> {
    let parts = rayon::current_num_threads().clamp(1, b.max(1));
    let per = b.div_ceil(parts);
    (0..b)
        .step_by(per.max(1))
        .map(|b0| (b0, per.min(b - b0)))
        .collect()
}

impl CustomOp3 for LstmSeq {
    fn name(&self) -> &'static str {
        "lstm-seq"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (b, t) = l1.shape().dims2()?;
        let (v, g) = l2.shape().dims2()?;
        let (g2, h) = l3.shape().dims2()?;
        if g != 4 * h || g2 != g {
            bail!(
                "lstm: table is {:?} and w_hh {:?}; want (V, 4H) and (4H, H)",
                l2.shape(),
                l3.shape()
            )
        }
        if t == 0 {
            bail!("lstm: empty sequence")
        }
        let Some((start, end)) = l1.contiguous_offsets() else {
            bail!("lstm: ids must be contiguous")
        };
        let ids = &s1.as_slice::<u32>()?[start..end];
        if let Some(&bad) = ids.iter().find(|&&i| i as usize >= v) {
            bail!("lstm: id {bad} out of range for a vocabulary of {v}")
        }
        let table = f32_slice(s2, l2, "table")?;
        let w_hh = f32_slice(s3, l3, "w_hh")?;
        let dims = Dims { t, h, v };
        // Packed once here, read by every thread at every step: W_hhᵀ (H × 4H), i.e.
        // element (k, j) is w_hh[j·H + k].
        let w_hh_t = PackedRhs::pack(h, g, w_hh, 1, h);
        let chunks: Vec<Chunk> = split_batch(b)
            .into_par_iter()
            .map(|(b0, rows)| Chunk::forward(b0, rows, &dims, ids, table, &w_hh_t))
            .collect();
        let mut out = Vec::with_capacity(b * h);
        for c in &chunks {
            out.extend_from_slice(&c.h_last);
        }
        if self.train {
            *self.saved.lock().expect("lstm state poisoned") = Some(chunks);
        }
        Ok((CpuStorage::F32(out), Shape::from((b, h))))
    }

    fn bwd(
        &self,
        ids: &Tensor,
        table: &Tensor,
        w_hh: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let guard = self.saved.lock().expect("lstm state poisoned");
        let Some(chunks) = guard.as_ref() else {
            bail!("lstm: backward through a forward run with train = false")
        };
        let (_, t) = ids.dims2()?;
        let (v, g) = table.dims2()?;
        let h = g / 4;
        let dims = Dims { t, h, v };
        let ids_v = ids.flatten_all()?.to_vec1::<u32>()?;
        let w = PackedRhs::pack(g, h, &w_hh.flatten_all()?.to_vec1::<f32>()?, h, 1);
        let grad = grad_res
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let parts: Vec<(Vec<f32>, Vec<f32>)> = chunks
            .par_iter()
            .map(|c| c.backward(&dims, &ids_v, &w, &grad))
            .collect();
        let mut iter = parts.into_iter();
        let (mut dtable, mut dw) = iter.next().expect("at least one chunk");
        for (dt, dww) in iter {
            dtable.iter_mut().zip(&dt).for_each(|(a, b)| *a += b);
            dw.iter_mut().zip(&dww).for_each(|(a, b)| *a += b);
        }
        let dev = table.device();
        Ok((
            None,
            Some(Tensor::from_vec(dtable, (v, g), dev)?),
            Some(Tensor::from_vec(dw, (g, h), dev)?),
        ))
    }
}

/// Batch-1 inference of LSTM + Dense on the CPU without building a graph: the book's
/// generation loop re-encodes a 60-character window for every drawn character, so the
/// per-step cost is all that matters.
pub struct CpuLstmRunner {
    hidden: usize,
    outputs: usize,
    /// `(V, 4H)`.
    table: Vec<f32>,
    /// `W_hhᵀ`, `(H, 4H)`.
    w_hh_t: Vec<f32>,
    /// The same, packed for the wavefront's matrix products.
    w_hh_t_packed: PackedRhs,
    /// `W_outᵀ`, `(H, O)`.
    out_w_t: Vec<f32>,
    out_b: Vec<f32>,
}

/// Reusable buffers for [`CpuLstmRunner::logits`].
#[derive(Default)]
pub struct RunnerScratch {
    gates: Vec<f32>,
    c: Vec<f32>,
    c_next: Vec<f32>,
    tc: Vec<f32>,
    h: Vec<f32>,
}

impl CpuLstmRunner {
    /// `table (V, 4H)`, `w_hh (4H, H)`, `out_w (O, H)`, `out_b (O)`, on any device.
    pub fn new(table: &Tensor, w_hh: &Tensor, out_w: &Tensor, out_b: &Tensor) -> Result<Self> {
        let cpu = |t: &Tensor| t.to_device(&Device::Cpu)?.to_dtype(DType::F32);
        let (_, g) = table.dims2()?;
        let (o, hidden) = out_w.dims2()?;
        if g != 4 * hidden || w_hh.dims2()? != (g, hidden) {
            bail!(
                "lstm runner: inconsistent shapes {:?} {:?} {:?}",
                table.shape(),
                w_hh.shape(),
                out_w.shape()
            )
        }
        let w_hh_t: Vec<f32> = cpu(w_hh)?.t()?.contiguous()?.flatten_all()?.to_vec1()?;
        Ok(Self {
            hidden,
            outputs: o,
            table: cpu(table)?.flatten_all()?.to_vec1()?,
            w_hh_t_packed: PackedRhs::pack(hidden, g, &w_hh_t, g, 1),
            w_hh_t,
            out_w_t: cpu(out_w)?.t()?.contiguous()?.flatten_all()?.to_vec1()?,
            out_b: cpu(out_b)?.flatten_all()?.to_vec1()?,
        })
    }

    pub fn vocab(&self) -> usize {
        self.table.len() / (4 * self.hidden)
    }

    pub fn outputs(&self) -> usize {
        self.outputs
    }

    /// Runs the LSTM from zero state over `ids` and writes the Dense layer's logits.
    pub fn logits(&self, ids: &[u32], s: &mut RunnerScratch, logits: &mut [f32]) {
        let (h, g) = (self.hidden, 4 * self.hidden);
        for buf in [&mut s.c, &mut s.c_next, &mut s.tc, &mut s.h] {
            buf.clear();
            buf.resize(h, 0.0);
        }
        s.gates.resize(g, 0.0);
        for (t, &id) in ids.iter().enumerate() {
            let id = id as usize;
            s.gates.copy_from_slice(&self.table[id * g..(id + 1) * g]);
            if t > 0 {
                fastmath::vec_mat_acc(&mut s.gates, &s.h, &self.w_hh_t);
            }
            fastmath::lstm_cell_forward(&mut s.gates, &s.c, &mut s.c_next, &mut s.tc, &mut s.h);
            std::mem::swap(&mut s.c, &mut s.c_next);
        }
        logits.copy_from_slice(&self.out_b);
        fastmath::vec_mat_acc(logits, &s.h, &self.out_w_t);
    }
}

#[cfg(test)]
mod tests;

/// The book's generation loop — for every drawn character, run the LSTM from zero state
/// over the last `maxlen` characters — computed as a wavefront.
///
/// Every window that a future character will need already knows all its inputs but the
/// characters not drawn yet, so all in-flight windows (one per start position) advance
/// together by one step each time a character is drawn: one `(maxlen × H) · (H × 4H)`
/// matmul per character instead of `maxlen` matrix-vector products. The results are
/// those of the sliding-window loop (each window still starts from zero state and sees
/// exactly its `maxlen` characters), at a fraction of the memory traffic.
pub struct Wavefront<'a> {
    runner: &'a CpuLstmRunner,
    maxlen: usize,
    /// Characters seen so far (seed + drawn).
    len: usize,
    /// Per slot (window start mod maxlen): hidden and cell state, `(maxlen, H)`.
    hs: Vec<f32>,
    cs: Vec<f32>,
    cs_next: Vec<f32>,
    gates: Vec<f32>,
    tc: Vec<f32>,
}

impl<'a> Wavefront<'a> {
    /// Starts from `seed` (its last `maxlen` ids are used; at least one id).
    pub fn new(runner: &'a CpuLstmRunner, maxlen: usize, seed: &[u32]) -> Result<Self> {
        let seed = &seed[seed.len().saturating_sub(maxlen)..];
        if seed.is_empty() || maxlen == 0 {
            bail!("generation needs a non-empty seed and maxlen")
        }
        let (m, h) = (maxlen, runner.hidden);
        let mut w = Self {
            runner,
            maxlen,
            len: 0,
            hs: vec![0.0; m * h],
            cs: vec![0.0; m * h],
            cs_next: vec![0.0; m * h],
            gates: vec![0.0; m * 4 * h],
            tc: vec![0.0; m * h],
        };
        for &id in seed {
            w.push(id);
        }
        Ok(w)
    }

    /// Logits of the next character: from the window of the last `maxlen` characters.
    pub fn logits(&self, out: &mut [f32]) {
        let h = self.runner.hidden;
        let start = self.len.saturating_sub(self.maxlen);
        let slot = start % self.maxlen;
        out.copy_from_slice(&self.runner.out_b);
        fastmath::vec_mat_acc(
            out,
            &self.hs[slot * h..(slot + 1) * h],
            &self.runner.out_w_t,
        );
    }

    /// Appends a character: a new window starts at it, and every window in flight
    /// consumes it.
    pub fn push(&mut self, id: u32) {
        let (m, h, g) = (self.maxlen, self.runner.hidden, 4 * self.runner.hidden);
        let id = id as usize;
        // The window that started `maxlen` characters ago is complete and its slot is
        // reused by the window starting now (zero state).
        let slot = self.len % m;
        self.hs[slot * h..(slot + 1) * h].fill(0.0);
        self.cs[slot * h..(slot + 1) * h].fill(0.0);
        let row = &self.runner.table[id * g..(id + 1) * g];
        let rows = Rows {
            gates: &mut self.gates,
            hs: &mut self.hs,
            cs: &self.cs,
            cs_next: &mut self.cs_next,
            tc: &mut self.tc,
        };
        // Two halves on two threads once there is enough work to pay for the hand-off
        // (a rayon join costs a few µs; a 60-row step costs ~100 µs).
        if m >= 16 && rayon::current_num_threads() > 1 {
            let (a, b) = rows.split(m / 2, h);
            let w = &self.runner.w_hh_t_packed;
            rayon::join(|| a.step(row, w, h), || b.step(row, w, h));
        } else {
            rows.step(row, &self.runner.w_hh_t_packed, h);
        }
        std::mem::swap(&mut self.cs, &mut self.cs_next);
        self.len += 1;
    }
}

/// A block of wavefront rows (windows), advanced together by one step.
struct Rows<'b> {
    gates: &'b mut [f32],
    hs: &'b mut [f32],
    cs: &'b [f32],
    cs_next: &'b mut [f32],
    tc: &'b mut [f32],
}

impl<'b> Rows<'b> {
    fn split(self, at: usize, h: usize) -> (Rows<'b>, Rows<'b>) {
        let (g0, g1) = self.gates.split_at_mut(at * 4 * h);
        let (h0, h1) = self.hs.split_at_mut(at * h);
        let (c0, c1) = self.cs.split_at(at * h);
        let (n0, n1) = self.cs_next.split_at_mut(at * h);
        let (t0, t1) = self.tc.split_at_mut(at * h);
        (
            Rows {
                gates: g0,
                hs: h0,
                cs: c0,
                cs_next: n0,
                tc: t0,
            },
            Rows {
                gates: g1,
                hs: h1,
                cs: c1,
                cs_next: n1,
                tc: t1,
            },
        )
    }

    /// gates = x_row + h · W_hhᵀ, then the cell, for every row.
    fn step(self, x_row: &[f32], w_hh_t: &PackedRhs, h: usize) {
        let g = 4 * h;
        let m = self.hs.len() / h;
        for gate_row in self.gates.chunks_exact_mut(g) {
            gate_row.copy_from_slice(x_row);
        }
        // Slots not started yet (short seeds) hold zero state: computing them is harmless.
        debug_assert_eq!((w_hh_t.k(), w_hh_t.n()), (h, g));
        // SAFETY: hs is m × H (row stride H) and gates m × 4H (row stride 4H), separate
        // buffers; W_hhᵀ is H × 4H as packed.
        unsafe {
            small::gemm_packed(
                m,
                self.gates.as_mut_ptr(),
                g,
                true,
                self.hs.as_ptr(),
                h,
                w_hh_t,
            );
        }
        for r in 0..m {
            fastmath::lstm_cell_forward(
                &mut self.gates[r * g..(r + 1) * g],
                &self.cs[r * h..(r + 1) * h],
                &mut self.cs_next[r * h..(r + 1) * h],
                &mut self.tc[r * h..(r + 1) * h],
                &mut self.hs[r * h..(r + 1) * h],
            );
        }
    }
}

#[cfg(test)]
mod wavefront_tests;
