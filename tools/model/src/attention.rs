//! Self-attention as one fused CPU op (F32): rope on q and k, grouped-query heads, scaled
//! scores, causal or additive mask, softmax and the weighted sum of values, forward and
//! closed-form backward, head by head with gemm.
//!
//! The composed formulation records about seventeen graph nodes per layer (reshapes,
//! transposes, copies, rope, two batched matmuls, softmax), several of them `[b, heads, s, s]`,
//! and candle's backprop zero-fills and adds a gradient buffer for every edge. Here the graph
//! holds one node; the probabilities and the rotated q and k stay in the op for the backward.
//!
//! Per head (`g` = its key/value head): `S = q_r k_rᵀ`, `P = softmax(scale·S + mask)`,
//! `O = P v`. Backward: `dP = dO vᵀ`, `dS = scale · P ⊙ (dP − rowsum(dP ⊙ P))`, `dq_r = dS k_r`,
//! `dk_r += dSᵀ q_r`, `dv += Pᵀ dO` (summed over the heads sharing `g`), and rope's gradient is
//! the inverse rotation.

use crate::fused::{CpuF32, f32_vec, softmax_row};
use crate::matmul::{Mat, MatMut, Threads, gemm};
use candle_core::{CpuStorage, Device, Layout, Result, Shape, Tensor, bail};
use rayon::prelude::*;
use std::sync::{Arc, OnceLock};

/// Query rows per block of the causal products.
const BLOCK: usize = 64;

/// Head counts, score scale, rope tables and mask of one attention call.
pub struct AttentionSpec<'a> {
    pub heads: usize,
    pub kv_heads: usize,
    pub scale: f64,
    /// Half rope tables `[s, hd/2]` or `[b, s, hd/2]` (rotate-half convention).
    pub cos: &'a Tensor,
    pub sin: &'a Tensor,
    /// Additive `[b|1, 1, s, s]` (`-inf` = blocked); `None` = causal.
    pub mask: Option<&'a Tensor>,
}

/// Attention over projections `q` `[b, s, heads·hd]`, `k` and `v` `[b, s, kv_heads·hd]`, as
/// the linear layers produce them; returns `[b, s, heads·hd]` ready for the output projection.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, spec: &AttentionSpec) -> Result<Tensor> {
    let (b, s, qw) = q.dims3()?;
    let (nh, nkv) = (spec.heads, spec.kv_heads);
    if nh == 0 || nkv == 0 || nh % nkv != 0 || qw % nh != 0 {
        bail!("attention: {nh} heads and {nkv} key/value heads do not fit width {qw}");
    }
    let hd = qw / nh;
    for (name, t) in [("k", k), ("v", v)] {
        if t.dims() != [b, s, nkv * hd] {
            bail!(
                "attention: {name} is {:?}, expected {:?}",
                t.dims(),
                [b, s, nkv * hd]
            );
        }
    }
    let half = hd / 2;
    let rope_batched = match spec.cos.dims() {
        [ts, th] if *ts == s && *th == half => false,
        [tb, ts, th] if *tb == b && *ts == s && *th == half => true,
        d => bail!("attention: rope table {d:?} does not fit [{b}, {s}, {half}]"),
    };
    let mask = match spec.mask {
        None => None,
        Some(m) => {
            let (mb, _, mq, mk) = m.dims4()?;
            if (mb != 1 && mb != b) || mq != s || mk != s {
                bail!("attention: mask {:?} does not fit {s} positions", m.dims());
            }
            Some((f32_vec(m)?, mb))
        }
    };
    let op = AttentionOp {
        shape: Dims { b, s, nh, nkv, hd },
        scale: spec.scale as f32,
        rope: Arc::new(Rope {
            cos: f32_vec(spec.cos)?,
            sin: f32_vec(spec.sin)?,
            batched: rope_batched,
        }),
        mask,
        keep: q.track_op() || k.track_op() || v.track_op(),
        saved: OnceLock::new(),
    };
    q.contiguous()?
        .apply_op3(&k.contiguous()?, &v.contiguous()?, op)
}

#[derive(Clone, Copy)]
struct Dims {
    b: usize,
    s: usize,
    nh: usize,
    nkv: usize,
    hd: usize,
}

struct Rope {
    cos: Vec<f32>,
    sin: Vec<f32>,
    batched: bool,
}

impl Rope {
    /// Rotates `x` (one head's row, `hd` values) in place; `inverse` = rope's transpose.
    fn rotate(&self, x: &mut [f32], row: usize, inverse: bool) {
        let half = x.len() / 2;
        let c = &self.cos[row * half..(row + 1) * half];
        let sn = &self.sin[row * half..(row + 1) * half];
        let (x1, x2) = x.split_at_mut(half);
        for i in 0..half {
            let (a, b) = (x1[i], x2[i]);
            if inverse {
                x1[i] = a * c[i] + b * sn[i];
                x2[i] = b * c[i] - a * sn[i];
            } else {
                x1[i] = a * c[i] - b * sn[i];
                x2[i] = b * c[i] + a * sn[i];
            }
        }
    }

    fn row(&self, d: &Dims, bi: usize, t: usize) -> usize {
        if self.batched { bi * d.s + t } else { t }
    }
}

/// `[b, s, n·hd]` → head-major `[b, n, s, hd]`, rotating each row when `rope` is given.
fn to_heads(x: &[f32], d: &Dims, n: usize, rope: Option<&Rope>) -> Vec<f32> {
    let (s, hd) = (d.s, d.hd);
    let mut out = vec![0f32; x.len()];
    out.par_chunks_mut(s * hd)
        .enumerate()
        .for_each(|(bh, chunk)| {
            let (bi, h) = (bh / n, bh % n);
            for (t, row) in chunk.chunks_mut(hd).enumerate() {
                let src = ((bi * s + t) * n + h) * hd;
                row.copy_from_slice(&x[src..src + hd]);
                if let Some(r) = rope {
                    r.rotate(row, r.row(d, bi, t), false);
                }
            }
        });
    out
}

/// Head-major `[b, n, s, hd]` → `[b, s, n·hd]`, applying rope's inverse rotation when given.
fn from_heads(x: &[f32], d: &Dims, n: usize, rope: Option<&Rope>) -> Vec<f32> {
    let (s, hd) = (d.s, d.hd);
    let mut out = vec![0f32; x.len()];
    out.par_chunks_mut(n * hd)
        .enumerate()
        .for_each(|(bt, chunk)| {
            let (bi, t) = (bt / s, bt % s);
            for (h, row) in chunk.chunks_mut(hd).enumerate() {
                let src = ((bi * n + h) * s + t) * hd;
                row.copy_from_slice(&x[src..src + hd]);
                if let Some(r) = rope {
                    r.rotate(row, r.row(d, bi, t), true);
                }
            }
        });
    out
}

/// Forward results the backward needs.
struct Saved {
    /// Rotated queries `[b, nh, s, hd]` and keys `[b, nkv, s, hd]`.
    q: Vec<f32>,
    k: Vec<f32>,
    /// Probabilities `[b, nh, s, s]` (zero where masked).
    p: Vec<f32>,
}

struct AttentionOp {
    shape: Dims,
    scale: f32,
    rope: Arc<Rope>,
    /// Additive mask values `[mb, s, s]` and `mb`.
    mask: Option<(Vec<f32>, usize)>,
    /// Keep [`Saved`] for a backward pass (some input records gradients).
    keep: bool,
    saved: OnceLock<Saved>,
}

impl AttentionOp {
    /// The first `rows` positions of `v` as key/value head `g` of batch row `bi`: row stride
    /// `nkv·hd`.
    fn v_head<'a>(&self, v: &'a [f32], bi: usize, g: usize, rows: usize) -> Mat<'a> {
        let d = &self.shape;
        Mat::rows(
            &v[(bi * d.s * d.nkv + g) * d.hd..],
            rows,
            d.hd,
            d.nkv * d.hd,
        )
    }

    /// Query blocks `[r0, r1)` and the number of keys they can see: with the causal mask a block
    /// sees keys `< r1` only, so the products skip the blocked upper triangle (10/16 of the
    /// work at 4 blocks); an explicit mask may open any key.
    fn blocks(&self) -> impl Iterator<Item = (usize, usize, usize)> + use<> {
        let (s, causal) = (self.shape.s, self.mask.is_none());
        (0..s).step_by(BLOCK).map(move |r0| {
            let r1 = (r0 + BLOCK).min(s);
            (r0, r1, if causal { r1 } else { s })
        })
    }

    fn forward(&self, q: &[f32], k: &[f32], v: &[f32]) -> Result<Vec<f32>> {
        let d = self.shape;
        let (s, hd, rep) = (d.s, d.hd, d.nh / d.nkv);
        let qr = to_heads(q, &d, d.nh, Some(&self.rope));
        let kr = to_heads(k, &d, d.nkv, Some(&self.rope));
        let mut p = vec![0f32; d.b * d.nh * s * s];
        let mut o = vec![0f32; d.b * d.nh * s * hd];
        p.par_chunks_mut(s * s)
            .zip(o.par_chunks_mut(s * hd))
            .enumerate()
            .try_for_each_init(
                || vec![0f32; s * s],
                |scores, (bh, (ph, oh))| -> Result<()> {
                    let (bi, h) = (bh / d.nh, bh % d.nh);
                    let g = h / rep;
                    let qh = &qr[bh * s * hd..(bh + 1) * s * hd];
                    let kg = &kr[(bi * d.nkv + g) * s * hd..(bi * d.nkv + g + 1) * s * hd];
                    for (r0, r1, c) in self.blocks() {
                        let n = r1 - r0;
                        let sc = MatMut::rows(&mut scores[r0 * s..r1 * s], n, c, s);
                        let qb = Mat::dense(&qh[r0 * hd..r1 * hd], n, hd);
                        let kb = Mat::dense(&kg[..c * hd], c, hd);
                        gemm(sc, false, qb, kb.t(), 1.0, Threads::Single)?;
                        for i in r0..r1 {
                            let (x, y) = (&scores[i * s..i * s + c], &mut ph[i * s..i * s + c]);
                            match &self.mask {
                                None => softmax_row(x, y, self.scale, None, i + 1),
                                Some((m, mb)) => {
                                    let off = ((if *mb == 1 { 0 } else { bi }) * s + i) * s;
                                    softmax_row(x, y, self.scale, Some(&m[off..off + s]), s)
                                }
                            }
                        }
                        let pb = Mat::rows(&ph[r0 * s..r1 * s], n, c, s);
                        let ob = MatMut::dense(&mut oh[r0 * hd..r1 * hd], n, hd);
                        gemm(
                            ob,
                            false,
                            pb,
                            self.v_head(v, bi, g, c),
                            1.0,
                            Threads::Single,
                        )?;
                    }
                    Ok(())
                },
            )?;
        if self.keep {
            let _ = self.saved.set(Saved { q: qr, k: kr, p });
        }
        Ok(from_heads(&o, &d, d.nh, None))
    }

    /// Gradients for `q`, `k`, `v` from the output gradient `g` `[b, s, nh·hd]`.
    fn backward(&self, v: &[f32], g: &[f32]) -> Result<[Vec<f32>; 3]> {
        let Some(saved) = self.saved.get() else {
            bail!("attention backward: the forward kept no state");
        };
        let d = self.shape;
        let (s, hd, rep) = (d.s, d.hd, d.nh / d.nkv);
        let mut dq = vec![0f32; d.b * d.nh * s * hd];
        let mut dk = vec![0f32; d.b * d.nkv * s * hd];
        let mut dv = vec![0f32; d.b * d.nkv * s * hd];
        dq.par_chunks_mut(rep * s * hd)
            .zip(dk.par_chunks_mut(s * hd).zip(dv.par_chunks_mut(s * hd)))
            .enumerate()
            .try_for_each_init(
                || vec![0f32; s * s],
                |ds, (bg, (dq_g, (dk_g, dv_g)))| -> Result<()> {
                    let (bi, kvh) = (bg / d.nkv, bg % d.nkv);
                    let kg = &saved.k[bg * s * hd..(bg + 1) * s * hd];
                    for (j, dq_h) in dq_g.chunks_mut(s * hd).enumerate() {
                        let h = kvh * rep + j;
                        let bh = bi * d.nh + h;
                        let ph = &saved.p[bh * s * s..(bh + 1) * s * s];
                        let qh = &saved.q[bh * s * hd..(bh + 1) * s * hd];
                        for (r0, r1, c) in self.blocks() {
                            let n = r1 - r0;
                            let go = &g[((bi * s + r0) * d.nh + h) * hd..];
                            let go = Mat::rows(go, n, hd, d.nh * hd);
                            let vb = self.v_head(v, bi, kvh, c);
                            let dsb = MatMut::rows(&mut ds[r0 * s..r1 * s], n, c, s);
                            gemm(dsb, false, go, vb.t(), 1.0, Threads::Single)?;
                            for i in r0..r1 {
                                let (dr, pr) = (&mut ds[i * s..i * s + c], &ph[i * s..i * s + c]);
                                let dot: f32 = dr.iter().zip(pr.iter()).map(|(a, b)| a * b).sum();
                                for (x, &pv) in dr.iter_mut().zip(pr) {
                                    *x = self.scale * pv * (*x - dot);
                                }
                            }
                            let dsb = Mat::rows(&ds[r0 * s..r1 * s], n, c, s);
                            let pb = Mat::rows(&ph[r0 * s..r1 * s], n, c, s);
                            let (kb, qb) = (
                                Mat::dense(&kg[..c * hd], c, hd),
                                Mat::dense(&qh[r0 * hd..r1 * hd], n, hd),
                            );
                            let dqb = MatMut::dense(&mut dq_h[r0 * hd..r1 * hd], n, hd);
                            gemm(dqb, false, dsb, kb, 1.0, Threads::Single)?;
                            // dk and dv start at zero and sum over blocks and grouped heads.
                            let dkb = MatMut::dense(&mut dk_g[..c * hd], c, hd);
                            gemm(dkb, true, dsb.t(), qb, 1.0, Threads::Single)?;
                            let dvb = MatMut::dense(&mut dv_g[..c * hd], c, hd);
                            gemm(dvb, true, pb.t(), go, 1.0, Threads::Single)?;
                        }
                    }
                    Ok(())
                },
            )?;
        Ok([
            from_heads(&dq, &d, d.nh, Some(&self.rope)),
            from_heads(&dk, &d, d.nkv, Some(&self.rope)),
            from_heads(&dv, &d, d.nkv, None),
        ])
    }
}

impl candle_core::CustomOp3 for AttentionOp {
    fn name(&self) -> &'static str {
        "attention"
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
        use crate::fused::f32_slice;
        let (q, k, v) = (
            f32_slice(s1, l1, "attention")?,
            f32_slice(s2, l2, "attention")?,
            f32_slice(s3, l3, "attention")?,
        );
        Ok((CpuStorage::F32(self.forward(q, k, v)?), l1.shape().clone()))
    }

    fn bwd(
        &self,
        _q: &Tensor,
        _k: &Tensor,
        v: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let g = grad.contiguous()?;
        let (v, g) = (CpuF32::new(v), CpuF32::new(&g));
        let [dq, dk, dv] = self.backward(v.slice("attention")?, g.slice("attention")?)?;
        let d = self.shape;
        let (q_shape, kv_shape) = ((d.b, d.s, d.nh * d.hd), (d.b, d.s, d.nkv * d.hd));
        Ok((
            Some(Tensor::from_vec(dq, q_shape, &Device::Cpu)?),
            Some(Tensor::from_vec(dk, kv_shape, &Device::Cpu)?),
            Some(Tensor::from_vec(dv, kv_shape, &Device::Cpu)?),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{max_rel_diff, random_normal};
    use candle_core::{D, Var};

    fn rand(shape: &[usize], seed: u64) -> Result<Tensor> {
        random_normal("attention-test", shape, seed, 1.0)
    }

    /// The same attention from candle ops, differentiated by autograd.
    fn composed(q: &Tensor, k: &Tensor, v: &Tensor, spec: &AttentionSpec) -> Result<Tensor> {
        let (b, s, qw) = q.dims3()?;
        let (nh, nkv) = (spec.heads, spec.kv_heads);
        let hd = qw / nh;
        let heads = |t: &Tensor, n: usize| t.reshape((b, s, n, hd))?.transpose(1, 2);
        let rope = |t: &Tensor| crate::ops::rope(t, spec.cos, spec.sin);
        let repeat = |t: Tensor| -> Result<Tensor> {
            t.unsqueeze(2)?
                .expand((b, nkv, nh / nkv, s, hd))?
                .reshape((b, nh, s, hd))
        };
        let q = rope(&heads(q, nh)?)?;
        let k = repeat(rope(&heads(k, nkv)?)?)?;
        let v = repeat(heads(v, nkv)?)?.contiguous()?;
        let causal: Vec<f32> = (0..s * s)
            .map(|i| {
                if i % s <= i / s {
                    0.0
                } else {
                    f32::NEG_INFINITY
                }
            })
            .collect();
        let mask = match spec.mask {
            Some(m) => m.clone(),
            None => Tensor::from_vec(causal, (1, 1, s, s), &Device::Cpu)?,
        };
        let att = (q.matmul(&k.t()?)? * spec.scale)?.broadcast_add(&mask)?;
        let att = candle_nn::ops::softmax(&att, D::Minus1)?;
        att.matmul(&v)?.transpose(1, 2)?.reshape((b, s, nh * hd))
    }

    /// Values and the gradients of q, k, v equal the composed path: grouped heads, causal or
    /// per-row additive mask (a blocked key in the middle of a row), shared or per-row rope,
    /// one query block or several.
    #[test]
    fn matches_autograd_over_candle_ops() -> Result<()> {
        let (b, nh, nkv, hd) = (2, 4, 2, 8);
        // 150 positions: three query blocks, the last one partial.
        for (case, per_row, s) in [
            (0, false, 6),
            (1, true, 6),
            (2, false, 6),
            (3, true, 150),
            (4, false, 150),
        ] {
            let q = Var::from_tensor(&rand(&[b, s, nh * hd], 1)?)?;
            let k = Var::from_tensor(&rand(&[b, s, nkv * hd], 2)?)?;
            let v = Var::from_tensor(&rand(&[b, s, nkv * hd], 3)?)?;
            let w = rand(&[b, s, nh * hd], 4)?;
            let rows = if per_row {
                vec![b, s, hd / 2]
            } else {
                vec![s, hd / 2]
            };
            let angle = (rand(&rows, 5)? * 3.0)?;
            let (cos, sin) = (angle.cos()?, angle.sin()?);
            let mask = (case == 2 || case == 4)
                .then(|| {
                    let m: Vec<f32> = (0..b * s * s)
                        .map(|i| {
                            let (r, i, j) = (i / (s * s), (i / s) % s, i % s);
                            let blocked = j > i || (j == 1 + r && j < i);
                            if blocked { f32::NEG_INFINITY } else { 0.0 }
                        })
                        .collect();
                    Tensor::from_vec(m, (b, 1, s, s), &Device::Cpu)
                })
                .transpose()?;
            let spec = AttentionSpec {
                heads: nh,
                kv_heads: nkv,
                scale: 0.3,
                cos: &cos,
                sin: &sin,
                mask: mask.as_ref(),
            };
            let (qt, kt, vt) = (q.as_tensor(), k.as_tensor(), v.as_tensor());
            let y1 = attention(qt, kt, vt, &spec)?;
            let y2 = composed(qt, kt, vt, &spec)?;
            assert!(max_rel_diff(&y1, &y2)? < 1e-5, "values, case {case}");
            let g1 = (&y1 * &w)?.sum_all()?.backward()?;
            let g2 = (&y2 * &w)?.sum_all()?.backward()?;
            for (name, t) in [("q", qt), ("k", kt), ("v", vt)] {
                let (Some(a), Some(b)) = (g1.get(t), g2.get(t)) else {
                    panic!("missing gradient for {name}");
                };
                let d = max_rel_diff(a, b)?;
                assert!(d < 1e-5, "gradient of {name}, case {case}: {d}");
            }
        }
        Ok(())
    }
}
