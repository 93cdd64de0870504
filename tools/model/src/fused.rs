//! CPU kernels for F32 training that fuse several element-wise steps into one pass, with a
//! closed-form backward that is itself one pass.
//!
//! Each replaces a chain of candle ops (each a fresh activation-sized buffer, a graph node and a
//! gradient buffer in backward): attention `softmax(x·scale + mask)` and SwiGLU `silu(g)·u`.
//! Rows are spread over rayon's global pool (the one gemm uses), not candle's element-wise
//! barrier pool. Callers use them only for contiguous F32 tensors on the CPU
//! ([`supported`]); other dtypes and devices keep the candle formulation.

use candle_core::{CpuStorage, DType, Layout, Result, Shape, Tensor, bail};
use rayon::prelude::*;

/// Whether the fused kernels handle this tensor (F32 on the CPU).
pub fn supported(x: &Tensor) -> bool {
    x.device().is_cpu() && x.dtype() == DType::F32
}

pub(crate) fn f32_slice<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::F32(v), Some((a, b))) => Ok(&v[a..b]),
        (CpuStorage::F32(_), None) => bail!("{what}: input is not contiguous"),
        _ => bail!("{what}: only F32 is supported"),
    }
}

fn f32_tensor(t: &Tensor) -> Result<Vec<f32>> {
    t.contiguous()?.flatten_all()?.to_vec1::<f32>()
}

/// `softmax(x·scale + mask)` over the last dimension of attention scores `x` `[b, h, q, k]`.
/// `mask`: additive `[b|1, 1, q, k]` (`-inf` = blocked); `None` = causal (key `j` visible
/// from query `i` when `j ≤ i + k − q`), built on the fly. Gradient:
/// `dx = scale · y ⊙ (g − Σ g⊙y)`.
pub fn masked_softmax(x: &Tensor, scale: f64, mask: Option<&Tensor>) -> Result<Tensor> {
    let (b, _, q, k) = x.dims4()?;
    let mask = match mask {
        None => None,
        Some(m) => {
            let (mb, _, mq, mk) = m.dims4()?;
            if (mb != 1 && mb != b) || mq != q || mk != k {
                bail!(
                    "masked_softmax: mask {:?} does not fit scores {:?}",
                    m.dims(),
                    x.dims()
                );
            }
            Some((f32_tensor(&m.to_dtype(DType::F32)?)?, mb))
        }
    };
    x.contiguous()?.apply_op1(MaskedSoftmax {
        scale: scale as f32,
        mask: mask.map(std::sync::Arc::new),
    })
}

struct MaskedSoftmax {
    scale: f32,
    /// Additive mask values `[mb, q, k]` and `mb`.
    mask: Option<std::sync::Arc<(Vec<f32>, usize)>>,
}

fn softmax_row(x: &[f32], y: &mut [f32], scale: f32, mask: Option<&[f32]>, visible: usize) {
    let x = &x[..visible];
    let y = &mut y[..visible];
    let mut max = f32::NEG_INFINITY;
    match mask {
        None => {
            for (yv, &xv) in y.iter_mut().zip(x) {
                *yv = xv * scale;
                max = max.max(*yv);
            }
        }
        Some(m) => {
            for ((yv, &xv), &mv) in y.iter_mut().zip(x).zip(m) {
                *yv = xv * scale + mv;
                max = max.max(*yv);
            }
        }
    }
    if max == f32::NEG_INFINITY {
        // Fully masked row: no key visible, all weights zero (and no NaN).
        y.fill(0.0);
        return;
    }
    let mut sum = 0.0f32;
    for yv in y.iter_mut() {
        *yv = (*yv - max).exp();
        sum += *yv;
    }
    let inv = 1.0 / sum;
    for yv in y.iter_mut() {
        *yv *= inv;
    }
}

impl candle_core::CustomOp1 for MaskedSoftmax {
    fn name(&self) -> &'static str {
        "masked-softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l, "masked_softmax")?;
        let (_, h, q, k) = l.shape().dims4()?;
        let mut y = vec![0f32; x.len()];
        let scale = self.scale;
        let mask = self.mask.as_deref();
        y.par_chunks_mut(k)
            .zip(x.par_chunks(k))
            .enumerate()
            .for_each(|(row, (yr, xr))| {
                let i = row % q;
                match mask {
                    None => softmax_row(xr, yr, scale, None, (i + 1 + k).saturating_sub(q)),
                    Some((m, mb)) => {
                        let bi = if *mb == 1 { 0 } else { row / (h * q) };
                        let off = (bi * q + i) * k;
                        softmax_row(xr, yr, scale, Some(&m[off..off + k]), k)
                    }
                }
            });
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let g = grad.contiguous()?;
        Ok(Some(
            res.detach()
                .apply_op2_no_bwd(&g, &SoftmaxBwd { scale: self.scale })?,
        ))
    }
}

/// `dx = scale · y ⊙ (g − Σ g⊙y)` row by row, from `(y, g)`.
struct SoftmaxBwd {
    scale: f32,
}

impl candle_core::CustomOp2 for SoftmaxBwd {
    fn name(&self) -> &'static str {
        "masked-softmax-bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let y = f32_slice(s1, l1, "masked_softmax backward")?;
        let g = f32_slice(s2, l2, "masked_softmax backward")?;
        if l1.shape() != l2.shape() {
            bail!("masked_softmax backward: shape mismatch");
        }
        let k = l1.shape().dims().last().copied().unwrap_or(1).max(1);
        let scale = self.scale;
        let mut dx = vec![0f32; y.len()];
        dx.par_chunks_mut(k)
            .zip(y.par_chunks(k).zip(g.par_chunks(k)))
            .for_each(|(dr, (yr, gr))| {
                let dot: f32 = yr.iter().zip(gr).map(|(a, b)| a * b).sum();
                for ((d, &yv), &gv) in dr.iter_mut().zip(yr).zip(gr) {
                    *d = scale * yv * (gv - dot);
                }
            });
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}

/// SwiGLU `silu(gate) ⊙ up` for same-shaped `gate`, `up`. Gradients:
/// `d_up = g ⊙ silu(gate)`, `d_gate = g ⊙ up ⊙ σ(gate)·(1 + gate·(1 − σ(gate)))`.
pub fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    if gate.shape() != up.shape() {
        bail!(
            "swiglu: gate {:?} and up {:?} differ",
            gate.dims(),
            up.dims()
        );
    }
    gate.contiguous()?.apply_op2(&up.contiguous()?, Swiglu)
}

struct Swiglu;

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

const CHUNK: usize = 4096;

impl candle_core::CustomOp2 for Swiglu {
    fn name(&self) -> &'static str {
        "swiglu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = f32_slice(s1, l1, "swiglu")?;
        let u = f32_slice(s2, l2, "swiglu")?;
        let mut y = vec![0f32; g.len()];
        y.par_chunks_mut(CHUNK)
            .zip(g.par_chunks(CHUNK).zip(u.par_chunks(CHUNK)))
            .for_each(|(yc, (gc, uc))| {
                for ((yv, &gv), &uv) in yc.iter_mut().zip(gc).zip(uc) {
                    *yv = gv * sigmoid(gv) * uv;
                }
            });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        gate: &Tensor,
        up: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let g = grad.contiguous()?;
        let (gate, up) = (gate.detach(), up.detach());
        let d_gate = gate.apply_op3_no_bwd(&up, &g, &SwigluBwd { gate: true })?;
        let d_up = gate.apply_op3_no_bwd(&up, &g, &SwigluBwd { gate: false })?;
        Ok((Some(d_gate), Some(d_up)))
    }
}

/// One SwiGLU input gradient from `(gate, up, g)`.
struct SwigluBwd {
    gate: bool,
}

impl candle_core::CustomOp3 for SwigluBwd {
    fn name(&self) -> &'static str {
        "swiglu-bwd"
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
        let ga = f32_slice(s1, l1, "swiglu backward")?;
        let up = f32_slice(s2, l2, "swiglu backward")?;
        let g = f32_slice(s3, l3, "swiglu backward")?;
        if ga.len() != up.len() || ga.len() != g.len() {
            bail!("swiglu backward: shape mismatch");
        }
        let want_gate = self.gate;
        let mut d = vec![0f32; ga.len()];
        d.par_chunks_mut(CHUNK)
            .zip(
                ga.par_chunks(CHUNK)
                    .zip(up.par_chunks(CHUNK).zip(g.par_chunks(CHUNK))),
            )
            .for_each(|(dc, (gac, (uc, gc)))| {
                for (((dv, &a), &u), &gv) in dc.iter_mut().zip(gac).zip(uc).zip(gc) {
                    let s = sigmoid(a);
                    *dv = if want_gate {
                        gv * u * s * (1.0 + a * (1.0 - s))
                    } else {
                        gv * a * s
                    };
                }
            });
        Ok((CpuStorage::F32(d), l1.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{D, Device, Var};

    fn rand(shape: &[usize], seed: u64) -> Result<Tensor> {
        let n = shape.iter().product();
        let v = crate::rng::Rng::derive(seed, "fused-test").normal_vec(n, 0.0, 1.0);
        Tensor::from_vec(v, shape, &Device::Cpu)
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
        (a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()
    }

    /// Additive mask `[mb, 1, q, k]`: causal, and per batch row a different blocked column.
    fn additive_mask(mb: usize, q: usize, k: usize, causal_only: bool) -> Result<Tensor> {
        let mut v = Vec::new();
        for bi in 0..mb {
            for i in 0..q {
                for j in 0..k {
                    let ok = j <= i + k - q && (causal_only || j != bi % k || j == i + k - q);
                    v.push(if ok { 0.0 } else { f32::NEG_INFINITY });
                }
            }
        }
        Tensor::from_vec(v, (mb, 1, q, k), &Device::Cpu)
    }

    /// Values and input gradients equal the autograd path (`x·scale + mask`, softmax).
    #[test]
    fn masked_softmax_matches_autograd() -> Result<()> {
        let (b, h, q, k) = (2, 3, 5, 7);
        let scale = 0.37;
        for (mask, mb) in [(None, 1), (Some(1), 1), (Some(2), 2)] {
            let x = Var::from_tensor(&rand(&[b, h, q, k], 1)?)?;
            let w = rand(&[b, h, q, k], 2)?;
            let m = match mask {
                None => None,
                Some(_) => Some(additive_mask(mb, q, k, false)?),
            };
            let reference_mask = m.clone().unwrap_or(additive_mask(1, q, k, true)?);
            let y1 = masked_softmax(x.as_tensor(), scale, m.as_ref())?;
            let y2 = candle_nn::ops::softmax(
                &(x.as_tensor() * scale)?.broadcast_add(&reference_mask)?,
                D::Minus1,
            )?;
            assert!(max_diff(&y1, &y2)? < 1e-6, "values, mask {mask:?}");
            let g1 = (&y1 * &w)?.sum_all()?.backward()?;
            let g2 = (&y2 * &w)?.sum_all()?.backward()?;
            let (Some(g1), Some(g2)) = (g1.get(x.as_tensor()), g2.get(x.as_tensor())) else {
                panic!("missing gradient");
            };
            assert!(max_diff(g1, g2)? < 1e-5, "gradients, mask {mask:?}");
            assert!(g1.abs()?.sum_all()?.to_scalar::<f32>()? > 1e-3);
        }
        Ok(())
    }

    #[test]
    fn fully_masked_row_gives_zeros_not_nan() -> Result<()> {
        let x = rand(&[1, 1, 2, 3], 3)?;
        let inf = f32::NEG_INFINITY;
        let m = Tensor::from_vec(
            vec![inf, inf, inf, 0.0, inf, 0.0],
            (1, 1, 2, 3),
            &Device::Cpu,
        )?;
        let y = masked_softmax(&x, 1.0, Some(&m))?
            .flatten_all()?
            .to_vec1::<f32>()?;
        assert_eq!(&y[..3], &[0.0, 0.0, 0.0]);
        assert!((y[3] + y[5] - 1.0).abs() < 1e-6 && y[4] == 0.0);
        Ok(())
    }

    #[test]
    fn swiglu_matches_autograd() -> Result<()> {
        let shape = [3, 4, 4099];
        let g = Var::from_tensor(&rand(&shape, 4)?)?;
        let u = Var::from_tensor(&rand(&shape, 5)?)?;
        let w = rand(&shape, 6)?;
        let y1 = swiglu(g.as_tensor(), u.as_tensor())?;
        let y2 = (candle_nn::ops::silu(g.as_tensor())? * u.as_tensor())?;
        assert!(max_diff(&y1, &y2)? < 1e-5);
        let g1 = (&y1 * &w)?.sum_all()?.backward()?;
        let g2 = (&y2 * &w)?.sum_all()?.backward()?;
        for v in [&g, &u] {
            let (Some(a), Some(b)) = (g1.get(v.as_tensor()), g2.get(v.as_tensor())) else {
                panic!("missing gradient");
            };
            assert!(max_diff(a, b)? < 1e-5);
        }
        Ok(())
    }
}
