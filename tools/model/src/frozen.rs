//! A frozen base matrix (a linear layer's weight, the token embedding, the output matrix): a
//! plain tensor, or blocks ([`QuantMatrix`], QLoRA) multiplied tile by tile. Either way the
//! gradient reaches only the input, never the matrix.

use crate::fused::{CpuF32, f32_slice};
use crate::lora::rows_cols;
use crate::matmul::{Mat, MatMut, Threads, gemm, product};
use crate::quant::QuantMatrix;
use anyhow::{Result, bail};
use candle_core::{CpuStorage, DType, Device, Layout, Shape, Tensor};
use std::sync::Arc;

#[derive(Debug, Clone)]
pub enum Frozen {
    Dense(Tensor),
    Quant(Arc<QuantMatrix>),
}

impl From<Tensor> for Frozen {
    fn from(t: Tensor) -> Self {
        Self::Dense(t)
    }
}

impl Frozen {
    /// `(rows, cols)`: `(out, in)` of a linear layer, `(vocab, hidden)` of an embedding.
    pub fn dims2(&self) -> candle_core::Result<(usize, usize)> {
        match self {
            Self::Dense(t) => t.dims2(),
            Self::Quant(q) => Ok(q.dims()),
        }
    }

    pub fn device(&self) -> Device {
        match self {
            Self::Dense(t) => t.device().clone(),
            Self::Quant(_) => Device::Cpu,
        }
    }

    /// Whether both are the same matrix (tied embeddings).
    pub fn is(&self, other: &Frozen) -> bool {
        match (self, other) {
            (Self::Dense(a), Self::Dense(b)) => a.id() == b.id(),
            (Self::Quant(a), Self::Quant(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }

    /// The plain tensor, `None` for blocks.
    pub fn dense(&self) -> Option<&Tensor> {
        match self {
            Self::Dense(t) => Some(t),
            Self::Quant(_) => None,
        }
    }

    /// Bytes the weights take.
    pub fn bytes(&self) -> usize {
        match self {
            Self::Dense(t) => t.elem_count() * t.dtype().size_in_bytes(),
            Self::Quant(q) => q.bytes(),
        }
    }

    /// The format name: the tensor's dtype, or the blocks' format.
    pub fn format(&self) -> String {
        match self {
            Self::Dense(t) => t.dtype().as_str().to_string(),
            Self::Quant(q) => q.format().name(),
        }
    }

    /// `x W^T` for `x` `[.., cols]`; backward: the input gradient only.
    pub fn linear(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Self::Dense(w) => crate::lora::frozen_linear(x, w),
            Self::Quant(q) => {
                if !crate::fused::supported(x) {
                    bail!(
                        "quantized base weights multiply f32 CPU inputs only, got {:?} on {:?}",
                        x.dtype(),
                        x.device().location()
                    );
                }
                Ok(x.contiguous()?.apply_op1(QuantLinear(q.clone()))?)
            }
        }
    }

    /// Rows `ids` (any shape of u32) → `[ids.len(), cols]`: an embedding lookup.
    pub fn embedding(&self, ids: &Tensor) -> Result<Tensor> {
        let flat = ids.flatten_all()?;
        match self {
            Self::Dense(t) => Ok(t.index_select(&flat, 0)?),
            Self::Quant(q) => {
                let ids: Vec<u32> = flat.to_dtype(DType::U32)?.to_vec1()?;
                let cols = q.dims().1;
                Ok(Tensor::from_vec(
                    q.gather(&ids)?,
                    (ids.len(), cols),
                    &Device::Cpu,
                )?)
            }
        }
    }

    /// `x W^T` on CPU f32 slices: `x` `[m, cols]` → `[m, rows]` (inside fused ops).
    pub(crate) fn times_t(&self, x: &[f32], m: usize) -> candle_core::Result<Vec<f32>> {
        match self {
            Self::Dense(w) => {
                let (n, k) = w.dims2()?;
                let data = CpuF32::new(w);
                product(
                    Mat::dense(x, m, k),
                    Mat::dense(data.slice("frozen")?, n, k).t(),
                    1.0,
                )
            }
            Self::Quant(q) => q.times_t(x, m),
        }
    }

    /// `dx (+)= g W` on CPU f32 slices: `g` `[m, rows]`, `dx` `[m, cols]` (inside fused ops).
    pub(crate) fn grad_into(
        &self,
        g: &[f32],
        m: usize,
        dx: &mut [f32],
        accumulate: bool,
    ) -> candle_core::Result<()> {
        match self {
            Self::Dense(w) => {
                let (n, k) = w.dims2()?;
                let data = CpuF32::new(w);
                gemm(
                    MatMut::dense(dx, m, k),
                    accumulate,
                    Mat::dense(g, m, n),
                    Mat::dense(data.slice("frozen")?, n, k),
                    1.0,
                    Threads::Pool,
                )
            }
            Self::Quant(q) => q.grad_into(g, m, dx, accumulate),
        }
    }
}

/// `x W^T` with `W` in blocks, as a graph node whose backward returns `dx = g W` only.
struct QuantLinear(Arc<QuantMatrix>);

impl candle_core::CustomOp1 for QuantLinear {
    fn name(&self) -> &'static str {
        "quant-linear"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l, "quant_linear")?;
        let (m, k) = rows_cols(l.shape());
        let (n, kw) = self.0.dims();
        if k != kw {
            candle_core::bail!(
                "quant_linear: input {:?} does not fit [{n}, {kw}]",
                l.dims()
            );
        }
        let y = self.0.times_t(x, m)?;
        let mut dims = l.dims().to_vec();
        if let Some(last) = dims.last_mut() {
            *last = n;
        }
        Ok((CpuStorage::F32(y), Shape::from(dims)))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let g = grad.contiguous()?;
        let g_data = CpuF32::new(&g);
        let (m, k) = rows_cols(x.shape());
        let mut dx = vec![0f32; m * k];
        self.0
            .grad_into(g_data.slice("quant_linear backward")?, m, &mut dx, false)?;
        Ok(Some(Tensor::from_vec(dx, x.shape(), x.device())?))
    }
}
