//! Attention of new query columns over a [`super::cache::KvCache`] as one CPU F32 pass.
//!
//! The composed formulation costs about ten candle ops a layer (reshapes, a mask add, two
//! batched matmuls that candle runs as one gemm call per head group, the softmax, the transpose
//! back), each a fresh buffer: at batch 8 they were most of a decoding step's time outside the
//! weight products, all on one thread. Here each (row, key/value head) pair is one work item
//! on candle's CPU pool (the one its quantized products use), with two products (the AVX-512
//! kernels of [`super::simd`] for decoding's few new columns, single-threaded gemm calls for
//! prefill) and the softmax rows in between, written straight into the `[b, s, heads·hd]`
//! layout the output projection reads.

use super::cache::visible;
use super::simd;
use crate::fused::{CpuF32, softmax_row};
use crate::matmul::{Mat, MatMut, Threads, gemm};
use anyhow::{Result, bail};
use candle_core::{DType, Storage, Tensor};
use half::f16;
use std::sync::OnceLock;

/// New columns up to which the products skip gemm ([`simd`]): decoding's one a step.
/// Prefill's hundreds of query rows are gemm's ground.
const SIMD_MAX_COLUMNS: usize = 4;

/// Shapes of one call: `s` new columns after `len` cached ones, `t = len + s`.
pub(crate) struct Shape {
    pub b: usize,
    pub s: usize,
    pub len: usize,
    pub nh: usize,
    pub nkv: usize,
    pub hd: usize,
}

/// `q` `[b, nh, s, hd]` (rotated, contiguous); `k`, `v` the cache's buffers (f32 or f16)
/// `[b, nkv, capacity, hd]` whose first `len + s` columns are filled; `pad[i]` the left padding
/// of row `i`. Returns `[b, s, nh·hd]`. A real column sees the real columns up to itself; a
/// padding column only itself, as in [`super::cache::KvCache`]'s mask.
pub(crate) fn cached_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    pad: &[usize],
    sh: &Shape,
    scale: f32,
) -> Result<Tensor> {
    let Shape {
        b,
        s,
        len,
        nh,
        nkv,
        hd,
    } = *sh;
    let t = len + s;
    let n_rep = nh / nkv;
    if q.dims() != [b, nh, s, hd] || pad.len() != b || nh % nkv != 0 {
        bail!(
            "cached attention: q {:?} for {b} rows, {nh} heads",
            q.dims()
        );
    }
    let q_data = CpuF32::new(q);
    let q_data = q_data.slice("cached attention q")?;
    let (kg, kl) = k.storage_and_layout();
    let (vg, vl) = v.storage_and_layout();
    let (Storage::Cpu(ks), Storage::Cpu(vs)) = (&*kg, &*vg) else {
        bail!("cached attention: the cache is not on the CPU");
    };
    let cache = match k.dtype() {
        DType::F16 => Cached::F16(ks.as_slice::<f16>()?, vs.as_slice::<f16>()?),
        _ => Cached::F32(ks.as_slice::<f32>()?, vs.as_slice::<f32>()?),
    };
    let (kst, vst) = (kl.stride(), vl.stride());
    if k.dims()[..2] != [b, nkv] || kst[2..] != [hd, 1] || vst != kst || k.dims() != v.dims() {
        bail!("cached attention: cache {:?} {:?}", k.dims(), kst);
    }
    let rows = n_rep * s;
    let item = Item {
        s,
        len,
        hd,
        scale,
        direct: s <= SIMD_MAX_COLUMNS && simd::supported(hd),
    };
    let items: Vec<OnceLock<Result<Vec<f32>>>> = (0..b * nkv).map(|_| OnceLock::new()).collect();
    let one = |it: usize| -> Result<Vec<f32>> {
        let (bi, g) = (it / nkv, it % nkv);
        let q_off = (bi * nh + g * n_rep) * s * hd;
        let qs = &q_data[q_off..q_off + rows * hd];
        let k_off = kl.start_offset() + bi * kst[0] + g * kst[1];
        let v_off = vl.start_offset() + bi * vst[0] + g * vst[1];
        let (kr, vr) = (k_off..k_off + t * hd, v_off..v_off + t * hd);
        match cache {
            Cached::F32(k, v) => item.attend(qs, &k[kr], &v[vr], pad[bi]),
            Cached::F16(k, v) => item.attend(qs, &k[kr], &v[vr], pad[bi]),
        }
    };
    candle_core::utils::barrier_pool().execute_chunked(items.len(), |range| {
        for it in range {
            let _ = items[it].set(one(it));
        }
    });
    // [b, s, nh·hd]: head h = g·n_rep + j of row bi, column i comes from item (bi, g) row j·s + i.
    let mut y = vec![0f32; b * s * nh * hd];
    for (item, cell) in items.into_iter().enumerate() {
        let out = match cell.into_inner() {
            Some(r) => r?,
            None => bail!("cached attention: item {item} did not run"),
        };
        let (bi, g) = (item / nkv, item % nkv);
        for j in 0..n_rep {
            let h = g * n_rep + j;
            for i in 0..s {
                let src = (j * s + i) * hd;
                let dst = ((bi * s + i) * nh + h) * hd;
                y[dst..dst + hd].copy_from_slice(&out[src..src + hd]);
            }
        }
    }
    Ok(Tensor::from_vec(y, (b, s, nh * hd), q.device())?)
}

/// The cache's keys and values, f32 or f16 (see [`super::cache::KvCache::new`]).
#[derive(Clone, Copy)]
enum Cached<'a> {
    F32(&'a [f32], &'a [f32]),
    F16(&'a [f16], &'a [f16]),
}

/// The shapes and choices shared by one call's (row, key/value head) items.
struct Item {
    s: usize,
    len: usize,
    hd: usize,
    scale: f32,
    /// The AVX-512 kernels rather than gemm.
    direct: bool,
}

impl Item {
    /// `n_rep · s` query rows `qs` over the `t = len + s` cached keys `ks` and values `vs` of a
    /// row with `pad` padding columns: `[n_rep · s, hd]`.
    fn attend<T: simd::CacheValue>(
        &self,
        qs: &[f32],
        ks: &[T],
        vs: &[T],
        pad: usize,
    ) -> Result<Vec<f32>> {
        let Item {
            s,
            len,
            hd,
            scale,
            direct,
        } = *self;
        let (t, rows) = (len + s, qs.len() / hd);
        let mut scores = vec![0f32; rows * t];
        // gemm reads f32: an f16 cache's item converted once (prefill only).
        let dense = (!direct).then(|| (T::as_f32(ks), T::as_f32(vs)));
        match &dense {
            None => simd::scores(qs, ks, hd, &mut scores),
            Some((kf, _)) => gemm(
                MatMut::dense(&mut scores, rows, t),
                false,
                Mat::dense(qs, rows, hd),
                Mat::dense(kf, t, hd).t(),
                1.0,
                Threads::Single,
            )?,
        }
        // The keys a row does not see keep weight 0.
        let mut probs = vec![0f32; rows * t];
        for r in 0..rows {
            let keys = visible(pad, len + r % s);
            let (x, y) = (&scores[r * t..][keys.clone()], &mut probs[r * t..][keys]);
            if direct {
                simd::softmax(x, y, scale);
            } else {
                softmax_row(x, y, scale, None, x.len());
            }
        }
        let mut out = vec![0f32; rows * hd];
        match &dense {
            None => simd::weighted_values(&probs, vs, hd, &mut out),
            Some((_, vf)) => gemm(
                MatMut::dense(&mut out, rows, hd),
                false,
                Mat::dense(&probs, rows, t),
                Mat::dense(vf, t, hd),
                1.0,
                Threads::Single,
            )?,
        }
        Ok(out)
    }
}
