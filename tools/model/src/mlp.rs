//! The SwiGLU MLP `down(silu(gate(x)) ⊙ up(x))` with frozen weights as one fused CPU op (F32),
//! for layers LoRA does not adapt.
//!
//! Tokens are independent here, so the op splits the rows into blocks and runs each block's
//! whole chain (three products and the activation, or their backward) on one thread: one
//! parallel region per call instead of a fork and join per product and per element-wise pass,
//! which is what kept two threads from doubling the speed of one. It also keeps three linear
//! nodes and the activation out of candle's graph (each a zero-filled gradient and an add in
//! backward). Backward: `dA = dY·Wd`, `dG = dA ⊙ U ⊙ σ(G)(1 + G(1 − σ(G)))`,
//! `dU = dA ⊙ silu(G)`, `dx = dG·Wg + dU·Wu`.

use crate::frozen::Frozen;
use crate::fused::{CpuF32, f32_slice, swiglu_grads, swiglu_value};
use crate::matmul::{Mat, MatMut, ROW_BLOCK, Threads, gemm};
use candle_core::{CpuStorage, Layout, Result, Shape, Tensor, bail};
use rayon::prelude::*;
use std::sync::OnceLock;

/// `x` `[.., h]` through the MLP with `gate`, `up` `[i, h]` and `down` `[h, i]`; the gradient
/// flows to `x` only.
pub fn frozen_swiglu_mlp(x: &Tensor, gate: &Tensor, up: &Tensor, down: &Tensor) -> Result<Tensor> {
    let h = x.dim(candle_core::D::Minus1)?;
    let (i, hg) = gate.dims2()?;
    if hg != h || up.dims() != [i, h] || down.dims() != [h, i] {
        bail!(
            "mlp: input {:?}, gate {:?}, up {:?}, down {:?} do not fit",
            x.dims(),
            gate.dims(),
            up.dims(),
            down.dims()
        );
    }
    let op = Mlp {
        w: [gate.contiguous()?, up.contiguous()?, down.contiguous()?],
        keep: x.track_op(),
        saved: OnceLock::new(),
    };
    x.contiguous()?.apply_op1(op)
}

/// `dst = a·b` (or `+=` when `accumulate`) on the calling thread: blocks run in parallel.
fn mul(dst: MatMut<'_>, accumulate: bool, a: Mat<'_>, b: Mat<'_>) -> Result<()> {
    gemm(dst, accumulate, a, b, 1.0, Threads::Single)
}

struct Mlp {
    /// gate `[i, h]`, up `[i, h]`, down `[h, i]`.
    w: [Tensor; 3],
    keep: bool,
    /// Gate and up projections `[m, i]` for the backward.
    saved: OnceLock<(Vec<f32>, Vec<f32>)>,
}

impl Mlp {
    fn dims(&self) -> (usize, usize) {
        let (i, h) = self.w[0].dims2().unwrap_or((0, 0));
        (h, i)
    }
}

impl candle_core::CustomOp1 for Mlp {
    fn name(&self) -> &'static str {
        "frozen-swiglu-mlp"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        const WHAT: &str = "mlp";
        let x = f32_slice(s, l, WHAT)?;
        let (h, i) = self.dims();
        let m = x.len() / h.max(1);
        let w = self.w.each_ref().map(CpuF32::new);
        let (wg, wu, wd) = (w[0].slice(WHAT)?, w[1].slice(WHAT)?, w[2].slice(WHAT)?);
        let (mut g, mut u, mut y) = (vec![0f32; m * i], vec![0f32; m * i], vec![0f32; m * h]);

        g.par_chunks_mut(ROW_BLOCK * i)
            .zip(u.par_chunks_mut(ROW_BLOCK * i))
            .zip(
                y.par_chunks_mut(ROW_BLOCK * h)
                    .zip(x.par_chunks(ROW_BLOCK * h)),
            )
            .try_for_each_init(
                || vec![0f32; ROW_BLOCK * i],
                |act, ((gb, ub), (yb, xb))| -> Result<()> {
                    let n = xb.len() / h;
                    let xm = Mat::dense(xb, n, h);
                    mul(MatMut::dense(gb, n, i), false, xm, Mat::dense(wg, i, h).t())?;
                    mul(MatMut::dense(ub, n, i), false, xm, Mat::dense(wu, i, h).t())?;
                    let act = &mut act[..n * i];
                    for ((a, &gv), &uv) in act.iter_mut().zip(gb.iter()).zip(ub.iter()) {
                        *a = swiglu_value(gv, uv);
                    }
                    let am = Mat::dense(act, n, i);
                    mul(MatMut::dense(yb, n, h), false, am, Mat::dense(wd, h, i).t())
                },
            )?;
        if self.keep {
            let _ = self.saved.set((g, u));
        }
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        const WHAT: &str = "mlp backward";
        let Some((g, u)) = self.saved.get() else {
            bail!("{WHAT}: the forward kept no state");
        };
        let (h, i) = self.dims();
        let grad = grad.contiguous()?;
        let dy = CpuF32::new(&grad);
        let dy = dy.slice(WHAT)?;
        let w = self.w.each_ref().map(CpuF32::new);
        let (wg, wu, wd) = (w[0].slice(WHAT)?, w[1].slice(WHAT)?, w[2].slice(WHAT)?);
        let m = dy.len() / h.max(1);
        if g.len() != m * i {
            bail!("{WHAT}: gradient {:?} does not fit", grad.dims());
        }
        let mut dx = vec![0f32; m * h];

        dx.par_chunks_mut(ROW_BLOCK * h)
            .zip(dy.par_chunks(ROW_BLOCK * h))
            .zip(g.par_chunks(ROW_BLOCK * i).zip(u.par_chunks(ROW_BLOCK * i)))
            .try_for_each_init(
                || (vec![0f32; ROW_BLOCK * i], vec![0f32; ROW_BLOCK * i]),
                |(dg, du), ((dxb, dyb), (gb, ub))| -> Result<()> {
                    let n = dyb.len() / h;
                    let (dg, du) = (&mut dg[..n * i], &mut du[..n * i]);
                    let dym = Mat::dense(dyb, n, h);
                    mul(MatMut::dense(dg, n, i), false, dym, Mat::dense(wd, h, i))?;
                    for (((dgv, duv), &gv), &uv) in dg.iter_mut().zip(du.iter_mut()).zip(gb).zip(ub)
                    {
                        (*dgv, *duv) = swiglu_grads(gv, uv, *dgv);
                    }
                    let (dgm, dum) = (Mat::dense(dg, n, i), Mat::dense(du, n, i));
                    mul(MatMut::dense(dxb, n, h), false, dgm, Mat::dense(wg, i, h))?;
                    mul(MatMut::dense(dxb, n, h), true, dum, Mat::dense(wu, i, h))
                },
            )?;
        Ok(Some(Tensor::from_vec(dx, x.shape(), x.device())?))
    }
}

/// [`frozen_swiglu_mlp`] over frozen matrices in blocks ([`crate::quant`]): the same chain as
/// one node, each product over whole rows through the tiled kernels (which dequantize a step of
/// rows at a time and spread the product over the pool), since per-block products would
/// dequantize every weight once per block of rows.
pub fn frozen_swiglu_mlp_blocks(x: &Tensor, w: [&Frozen; 3]) -> Result<Tensor> {
    let h = x.dim(candle_core::D::Minus1)?;
    let (i, hg) = w[0].dims2()?;
    if hg != h || w[1].dims2()? != (i, h) || w[2].dims2()? != (h, i) {
        bail!("mlp: input {:?} does not fit its weights", x.dims());
    }
    let op = BlockMlp {
        w: w.map(Frozen::clone),
        keep: x.track_op(),
        saved: OnceLock::new(),
    };
    x.contiguous()?.apply_op1(op)
}

struct BlockMlp {
    /// gate `[i, h]`, up `[i, h]`, down `[h, i]`.
    w: [Frozen; 3],
    keep: bool,
    saved: OnceLock<(Vec<f32>, Vec<f32>)>,
}

impl candle_core::CustomOp1 for BlockMlp {
    fn name(&self) -> &'static str {
        "frozen-swiglu-mlp-blocks"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l, "mlp")?;
        let (_, h) = self.w[0].dims2()?;
        let m = x.len() / h.max(1);
        let g = self.w[0].times_t(x, m)?;
        let u = self.w[1].times_t(x, m)?;
        let mut act = vec![0f32; g.len()];
        act.par_chunks_mut(ELEMENTS)
            .zip(g.par_chunks(ELEMENTS).zip(u.par_chunks(ELEMENTS)))
            .for_each(|(a, (gb, ub))| {
                for ((a, &gv), &uv) in a.iter_mut().zip(gb).zip(ub) {
                    *a = swiglu_value(gv, uv);
                }
            });
        let y = self.w[2].times_t(&act, m)?;
        if self.keep {
            let _ = self.saved.set((g, u));
        }
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        const WHAT: &str = "mlp backward";
        let Some((g, u)) = self.saved.get() else {
            bail!("{WHAT}: the forward kept no state");
        };
        let grad = grad.contiguous()?;
        let dy = CpuF32::new(&grad);
        let dy = dy.slice(WHAT)?;
        let (i, h) = self.w[0].dims2()?;
        let m = dy.len() / h.max(1);
        if g.len() != m * i {
            bail!("{WHAT}: gradient {:?} does not fit", grad.dims());
        }
        let mut dg = vec![0f32; m * i];
        self.w[2].grad_into(dy, m, &mut dg, false)?;
        let mut du = vec![0f32; m * i];
        dg.par_chunks_mut(ELEMENTS)
            .zip(du.par_chunks_mut(ELEMENTS))
            .zip(g.par_chunks(ELEMENTS).zip(u.par_chunks(ELEMENTS)))
            .for_each(|((dgb, dub), (gb, ub))| {
                for (((dgv, duv), &gv), &uv) in dgb.iter_mut().zip(dub).zip(gb).zip(ub) {
                    (*dgv, *duv) = swiglu_grads(gv, uv, *dgv);
                }
            });
        let mut dx = vec![0f32; m * h];
        self.w[0].grad_into(&dg, m, &mut dx, false)?;
        self.w[1].grad_into(&du, m, &mut dx, true)?;
        Ok(Some(Tensor::from_vec(dx, x.shape(), x.device())?))
    }
}

/// Elements per parallel chunk of the element-wise passes.
const ELEMENTS: usize = 1 << 14;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::max_rel_diff;
    use candle_core::Var;

    fn rand(shape: &[usize], seed: u64, std: f64) -> Result<Tensor> {
        crate::fixtures::random_normal("mlp-test", shape, seed, std)
    }

    #[test]
    fn same_bits_on_one_and_three_threads() -> Result<()> {
        let x = Var::from_tensor(&rand(&[3, 200, 16], 6, 1.0)?)?;
        let w = [
            rand(&[24, 16], 7, 0.3)?,
            rand(&[24, 16], 8, 0.3)?,
            rand(&[16, 24], 9, 0.3)?,
        ];
        let run = |threads: usize| -> Result<(Vec<f32>, Vec<f32>)> {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .map_err(candle_core::Error::wrap)?;
            pool.install(|| {
                let y = frozen_swiglu_mlp(x.as_tensor(), &w[0], &w[1], &w[2])?;
                let g = y.sqr()?.sum_all()?.backward()?;
                let Some(dx) = g.get(x.as_tensor()) else {
                    bail!("missing gradient");
                };
                Ok((y.flatten_all()?.to_vec1()?, dx.flatten_all()?.to_vec1()?))
            })
        };
        assert_eq!(run(1)?, run(3)?);
        Ok(())
    }

    /// On blocks: the values and input gradient of the dense op on the dequantized weights.
    #[test]
    fn blocks_match_the_dense_op_on_their_weights() -> Result<()> {
        use crate::quant::{Format, QuantMatrix};
        use std::sync::Arc;
        let (h, i) = (64, 128);
        let x = Var::from_tensor(&rand(&[2, 37, h], 1, 1.0)?)?;
        let shapes = [[i, h], [i, h], [h, i]];
        let mut blocks = Vec::new();
        let mut dense = Vec::new();
        for (seed, shape) in shapes.iter().enumerate() {
            let w = rand(shape, seed as u64 + 2, 0.3)?;
            let q = QuantMatrix::quantize(
                &w,
                Format::Nf4 {
                    double_quant: false,
                },
            )
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
            dense.push(
                q.dequantize(&candle_core::Device::Cpu)
                    .map_err(|e| candle_core::Error::Msg(e.to_string()))?,
            );
            blocks.push(Frozen::Quant(Arc::new(q)));
        }
        let weights = rand(&[2, 37, h], 5, 1.0)?;
        let xt = x.as_tensor();
        let y1 = frozen_swiglu_mlp_blocks(xt, [&blocks[0], &blocks[1], &blocks[2]])?;
        let y2 = frozen_swiglu_mlp(xt, &dense[0], &dense[1], &dense[2])?;
        assert!(max_rel_diff(&y1, &y2)? < 1e-5);
        let g1 = (&y1 * &weights)?.sum_all()?.backward()?;
        let g2 = (&y2 * &weights)?.sum_all()?.backward()?;
        let (Some(a), Some(b)) = (g1.get(xt), g2.get(xt)) else {
            panic!("missing gradient");
        };
        assert!(max_rel_diff(a, b)? < 1e-5);
        Ok(())
    }

    /// Values and the input gradient equal candle's ops under autograd; 2·301 rows make three
    /// blocks, the last one partial.
    #[test]
    fn matches_autograd_over_candle_ops() -> Result<()> {
        let (h, i) = (16, 24);
        for rows in [5, 301] {
            let x = Var::from_tensor(&rand(&[2, rows, h], 1, 1.0)?)?;
            let (wg, wu, wd) = (
                rand(&[i, h], 2, 0.3)?,
                rand(&[i, h], 3, 0.3)?,
                rand(&[h, i], 4, 0.3)?,
            );
            let weights = rand(&[2, rows, h], 5, 1.0)?;
            let xt = x.as_tensor();
            let y1 = frozen_swiglu_mlp(xt, &wg, &wu, &wd)?;
            let gate = xt.broadcast_matmul(&wg.t()?)?;
            let up = xt.broadcast_matmul(&wu.t()?)?;
            let y2 = (candle_nn::ops::silu(&gate)? * up)?.broadcast_matmul(&wd.t()?)?;
            assert!(max_rel_diff(&y1, &y2)? < 1e-5, "values, {rows} rows");
            let g1 = (&y1 * &weights)?.sum_all()?.backward()?;
            let g2 = (&y2 * &weights)?.sum_all()?.backward()?;
            let (Some(a), Some(b)) = (g1.get(xt), g2.get(xt)) else {
                panic!("missing gradient");
            };
            assert!(max_rel_diff(a, b)? < 1e-5, "gradient, {rows} rows");
            assert!(g1.get(&wg).is_none(), "frozen weights get no gradient");
        }
        Ok(())
    }
}
