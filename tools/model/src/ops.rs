//! candle's fused softmax and RMSNorm with a backward pass attached.
//!
//! The fused kernels record no backward (candle#2168). Here the fused result `y` is computed
//! without a graph, then passed through a `CustomOp2(x, y)` whose forward copies `y` and whose
//! backward applies the closed-form gradient: far fewer graph nodes and temporaries than
//! autograd through the basic-op formulation, on the CPU and CUDA alike.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CudaStorage, D, DType, Layout, Result, Shape, Tensor};

fn copy_fwd<S: BackendStorage>(s: &S, l: &Layout) -> Result<(S, Shape)> {
    Ok((s.affine(l, 1.0, 0.0)?, l.shape().clone()))
}

/// Softmax over the last dimension; gradient `y ⊙ (g − Σ g⊙y)`.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    let y = candle_nn::ops::softmax_last_dim(&x.detach())?;
    if !x.track_op() {
        return Ok(y);
    }
    x.apply_op2(&y, SoftmaxGrad)
}

struct SoftmaxGrad;

impl candle_core::CustomOp2 for SoftmaxGrad {
    fn name(&self) -> &'static str {
        "softmax-last-dim-with-grad"
    }
    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        s: &CpuStorage,
        l: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        copy_fwd(s, l)
    }
    fn cuda_fwd(
        &self,
        _: &CudaStorage,
        _: &Layout,
        s: &CudaStorage,
        l: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        copy_fwd(s, l)
    }
    fn bwd(
        &self,
        _x: &Tensor,
        _y: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let y = res.detach();
        let s = (grad * &y)?.sum_keepdim(D::Minus1)?;
        Ok((Some((grad.broadcast_sub(&s)? * y)?), None))
    }
}

/// RMSNorm with a frozen weight (on the CPU in F32: one fused node, [`crate::fused::rms_norm`]);
/// gradient for `x` only:
/// `dx = r·(g⊙w) − x·r³·mean((g⊙w)⊙x)`, `r = 1/√(mean(x²)+eps)`, computed in F32.
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    if crate::fused::supported(x) && crate::fused::supported(w) {
        return crate::fused::rms_norm(x, w, eps);
    }
    let xc = x.detach().contiguous()?;
    let y = candle_nn::ops::rms_norm(&xc, w, eps as f32)?;
    if !x.track_op() {
        return Ok(y);
    }
    x.apply_op2(&y, RmsNormGrad { w: w.detach(), eps })
}

struct RmsNormGrad {
    w: Tensor,
    eps: f64,
}

impl candle_core::CustomOp2 for RmsNormGrad {
    fn name(&self) -> &'static str {
        "rms-norm-with-grad"
    }
    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        s: &CpuStorage,
        l: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        copy_fwd(s, l)
    }
    fn cuda_fwd(
        &self,
        _: &CudaStorage,
        _: &Layout,
        s: &CudaStorage,
        l: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        copy_fwd(s, l)
    }
    fn bwd(
        &self,
        x: &Tensor,
        _y: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let dt = x.dtype();
        let x = x.detach().to_dtype(DType::F32)?;
        let gw = grad
            .to_dtype(DType::F32)?
            .broadcast_mul(&self.w.to_dtype(DType::F32)?)?;
        let r = (x.sqr()?.mean_keepdim(D::Minus1)? + self.eps)?
            .sqrt()?
            .recip()?;
        let m = (&gw * &x)?.mean_keepdim(D::Minus1)?;
        let coef = (r.sqr()? * m)?;
        let dx = (gw - x.broadcast_mul(&coef)?)?.broadcast_mul(&r)?;
        Ok((Some(dx.to_dtype(dt)?), None))
    }
}

/// Rotate-half rope (`candle_nn::rotary_emb::rope`) with its backward: rope is a rotation, so
/// `dx = rope(g, cos, −sin)`. `cos`/`sin`: `[s, d/2]` or `[b, s, d/2]`, `x`: `[b, h, s, d]`.
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let xc = x.detach().contiguous()?;
    let y = candle_nn::rotary_emb::rope(&xc, cos, sin)?;
    if !x.track_op() {
        return Ok(y);
    }
    x.apply_op2(
        &y,
        RopeGrad {
            cos: cos.detach(),
            neg_sin: sin.detach().neg()?,
        },
    )
}

struct RopeGrad {
    cos: Tensor,
    neg_sin: Tensor,
}

impl candle_core::CustomOp2 for RopeGrad {
    fn name(&self) -> &'static str {
        "rope-with-grad"
    }
    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        s: &CpuStorage,
        l: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        copy_fwd(s, l)
    }
    fn cuda_fwd(
        &self,
        _: &CudaStorage,
        _: &Layout,
        s: &CudaStorage,
        l: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        copy_fwd(s, l)
    }
    fn bwd(
        &self,
        _x: &Tensor,
        _y: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let g = grad.contiguous()?;
        Ok((
            Some(candle_nn::rotary_emb::rope(&g, &self.cos, &self.neg_sin)?),
            None,
        ))
    }
}
