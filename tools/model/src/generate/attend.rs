//! Attention of new query columns over a [`super::cache::KvCache`] as one CPU F32 pass.
//!
//! The composed formulation costs about ten candle ops a layer (reshapes, a mask add, two
//! batched matmuls that candle runs as one gemm call per head group, the softmax, the transpose
//! back), each a fresh buffer: at batch 8 they were most of a decoding step's time outside the
//! weight products, all on one thread. Here each (row, key/value head) pair is one work item
//! on candle's CPU pool (the one its quantized products use), with two products (the AVX-512
//! kernels of [`super::simd`] for decoding's few new columns, single-threaded gemm calls for
//! prefill) and the softmax rows in between, written straight into the `[b, s, heads·hd]`
//! layout the output projection reads. The queries come as the products give them and each item
//! rotates its own (rope); the cache's new keys are rotated as they are written
//! ([`write_head`]), so a layer has no candle ops between its products and this pass.

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

/// `q` `[b, s, nh·hd]` as the products give it (not yet rotated: each item rotates its own
/// rows by `rope`); `k`, `v` the cache's buffers (f32 or f16) `[b, nkv, capacity, hd]` whose
/// first `len + s` columns are filled; `pad[i]` the left padding of row `i`. Returns
/// `[b, s, nh·hd]`. A real column sees the real columns up to itself; a padding column only
/// itself, as in [`super::cache::KvCache`]'s mask.
pub(crate) fn cached_attention(
    q: &Tensor,
    rope: &Rope<'_>,
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
    if q.dims() != [b, s, nh * hd] || pad.len() != b || nh % nkv != 0 {
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
        // Query row j·s + i: head g·n_rep + j of column i.
        let mut qs = vec![0f32; rows * hd];
        for (r, out) in qs.chunks_exact_mut(hd).enumerate() {
            let (h, col) = (g * n_rep + r / s, bi * s + r % s);
            write_head(
                &q_data[(col * nh + h) * hd..][..hd],
                Some(rope.tables(col, hd)),
                out,
            );
        }
        let k_off = kl.start_offset() + bi * kst[0] + g * kst[1];
        let v_off = vl.start_offset() + bi * vst[0] + g * vst[1];
        let (kr, vr) = (k_off..k_off + t * hd, v_off..v_off + t * hd);
        match cache {
            Cached::F32(k, v) => item.attend(&qs, &k[kr], &v[vr], pad[bi]),
            Cached::F16(k, v) => item.attend(&qs, &k[kr], &v[vr], pad[bi]),
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

/// Rope's tables for one call's new columns: `cos`, `sin` `[b·s, hd/2]`, column `bi·s + i`
/// (candle_nn's `rope`, halves rotated, not interleaved pairs).
#[derive(Default)]
pub(crate) struct Rope<'a> {
    pub cos: &'a [f32],
    pub sin: &'a [f32],
}

impl Rope<'_> {
    /// The tables of column `col` for heads of `hd` values.
    pub(crate) fn tables(&self, col: usize, hd: usize) -> (&[f32], &[f32]) {
        let half = hd / 2;
        (
            &self.cos[col * half..][..half],
            &self.sin[col * half..][..half],
        )
    }
}

/// One head `x` written to `out` in `T`, rotated by its column's rope tables `rot` where given,
/// with candle_nn's `rope` arithmetic (no fused multiply-add), so the cached path gives the
/// uncached one's bits.
pub(crate) fn write_head<T: simd::CacheValue>(
    x: &[f32],
    rot: Option<(&[f32], &[f32])>,
    out: &mut [T],
) {
    if simd::write_head_supported(x.len()) {
        return simd::write_head(x, rot, out);
    }
    let half = x.len() / 2;
    match rot {
        None => {
            for (o, &v) in out.iter_mut().zip(x) {
                *o = T::from_f32(v);
            }
        }
        Some((cos, sin)) => {
            let (x1, x2) = x.split_at(half);
            let (o1, o2) = out.split_at_mut(half);
            for i in 0..half {
                o1[i] = T::from_f32(x1[i] * cos[i] - x2[i] * sin[i]);
                o2[i] = T::from_f32(x1[i] * sin[i] + x2[i] * cos[i]);
            }
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Each head written to the cache (f32 and f16, 16-lane and scalar head sizes) holds the bits
    /// of candle_nn's `rope` followed by candle's dtype conversion, and unrotated values the
    /// conversion's bits alone.
    #[test]
    fn written_heads_hold_candles_rope_bits() -> Result<()> {
        for hd in [16, 32, 64, 128] {
            let half = hd / 2;
            let x: Vec<f32> = (0..hd).map(|i| ((i as f32) * 0.37).sin() * 3.0).collect();
            let angles: Vec<f32> = (0..half).map(|i| 11.0 / 1.7f32.powi(i as i32)).collect();
            let cos: Vec<f32> = angles.iter().map(|a| a.cos()).collect();
            let sin: Vec<f32> = angles.iter().map(|a| a.sin()).collect();
            let dev = Device::Cpu;
            let want = candle_nn::rotary_emb::rope(
                &Tensor::from_slice(&x, (1, 1, 1, hd), &dev)?,
                &Tensor::from_slice(&cos, (1, half), &dev)?,
                &Tensor::from_slice(&sin, (1, half), &dev)?,
            )?;
            let rope = Rope {
                cos: &cos,
                sin: &sin,
            };
            for (rot, want) in [
                (Some(rope.tables(0, hd)), want),
                (None, Tensor::from_slice(&x, (1, 1, 1, hd), &dev)?),
            ] {
                let want32 = want.flatten_all()?.to_vec1::<f32>()?;
                let want16 = want.to_dtype(DType::F16)?.flatten_all()?.to_vec1::<f16>()?;
                let mut got32 = vec![0f32; hd];
                write_head(&x, rot, &mut got32);
                let mut got16 = vec![f16::ZERO; hd];
                write_head(&x, rot, &mut got16);
                let bits32 = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                let bits16 = |v: &[f16]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(
                    bits32(&got32),
                    bits32(&want32),
                    "hd {hd} f32 {}",
                    rot.is_some()
                );
                assert_eq!(
                    bits16(&got16),
                    bits16(&want16),
                    "hd {hd} f16 {}",
                    rot.is_some()
                );
            }
        }
        Ok(())
    }
}
