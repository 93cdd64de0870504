//! Gradient checkpointing of decoder layers: the forward keeps only each layer's input; the
//! backward runs the layer again, with gradients, from that input. Activation memory falls from
//! every layer's intermediates to one layer's at a time, for a second forward of each layer.
//!
//! A layer is one graph node, a `CustomOp2(x, z)`. Its LoRA tensors are not inputs of that node
//! (an op takes at most three), so its backward computes their gradients and leaves them in a
//! slot; they reach candle's gradient store through a chain of small nodes, one per LoRA
//! tensor, that produce the one-element `z` from those tensors: `z = inject(…inject(0, A₁)…, Bₙ)`.
//! Being upstream of the layer node, each inject node's backward runs after the layer's and
//! hands on its tensor's gradient from the slot. The chain costs one float per node.

use crate::model::{CausalLm, LayerInputs};
use anyhow::{Result, bail};
use candle_core::{CpuStorage, DType, Device, Layout, Shape, Tensor, TensorId, Var};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

type Slot = Arc<Mutex<HashMap<TensorId, Tensor>>>;

/// Decoder layer `li` of `model` on `x`, checkpointed (CPU, F32).
pub(crate) fn layer(
    model: &Arc<CausalLm>,
    li: usize,
    x: &Tensor,
    shared: &LayerInputs,
) -> Result<Tensor> {
    if !crate::fused::supported(x) {
        bail!("gradient checkpointing runs on the CPU in f32 for now");
    }
    let slot: Slot = Arc::default();
    let mut z = Tensor::zeros(1, DType::F32, &Device::Cpu)?;
    for var in model.layer_lora(li) {
        let inject = Inject {
            id: var.as_tensor().id(),
            slot: slot.clone(),
        };
        z = z.apply_op2(var.as_tensor(), inject)?;
    }
    let op = Layer {
        model: model.clone(),
        li,
        shared: shared.clone(),
        slot,
    };
    Ok(x.contiguous()?.apply_op2(&z, op)?)
}

fn to_storage(t: &Tensor) -> candle_core::Result<(CpuStorage, Shape)> {
    let v = t.flatten_all()?.to_vec1::<f32>()?;
    Ok((CpuStorage::F32(v), t.shape().clone()))
}

struct Layer {
    model: Arc<CausalLm>,
    li: usize,
    shared: LayerInputs,
    slot: Slot,
}

fn lock(slot: &Slot) -> candle_core::Result<std::sync::MutexGuard<'_, HashMap<TensorId, Tensor>>> {
    slot.lock()
        .map_err(|_| candle_core::Error::Msg("checkpoint slot poisoned".into()))
}

fn err(e: anyhow::Error) -> candle_core::Error {
    candle_core::Error::Msg(format!("{e:#}"))
}

impl candle_core::CustomOp2 for Layer {
    fn name(&self) -> &'static str {
        "checkpointed-layer"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = crate::fused::f32_slice(s1, l1, "checkpointed layer")?;
        let x = Tensor::from_slice(x, l1.shape(), &Device::Cpu)?;
        // The graph this builds (the LoRA tensors track) dies with `y`: nothing is kept.
        let y = self.model.layer(self.li, &x, &self.shared).map_err(err)?;
        to_storage(&y)
    }

    fn bwd(
        &self,
        x: &Tensor,
        z: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let input = x
            .track_op()
            .then(|| Var::from_tensor(&x.detach()))
            .transpose()?;
        let x_again = input.as_ref().map_or(x.detach(), |v| v.as_tensor().clone());
        let y = self
            .model
            .layer(self.li, &x_again, &self.shared)
            .map_err(err)?;
        let store = (y * grad)?.sum_all()?.backward()?;
        let mut slot = lock(&self.slot)?;
        for var in self.model.layer_lora(self.li) {
            if let Some(g) = store.get(var.as_tensor()) {
                slot.insert(var.as_tensor().id(), g.clone());
            }
        }
        let dx = input.and_then(|v| store.get(v.as_tensor()).cloned());
        Ok((dx, Some(z.zeros_like()?)))
    }
}

/// `z` unchanged, as a node that hands tensor `id` its gradient from the slot.
struct Inject {
    id: TensorId,
    slot: Slot,
}

impl candle_core::CustomOp2 for Inject {
    fn name(&self) -> &'static str {
        "checkpoint-gradient"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let z = crate::fused::f32_slice(s1, l1, "checkpoint gradient")?;
        Ok((CpuStorage::F32(z.to_vec()), l1.shape().clone()))
    }

    fn bwd(
        &self,
        _z: &Tensor,
        var: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let g = lock(&self.slot)?.remove(&self.id);
        let g = match g {
            Some(g) => g,
            None => var.zeros_like()?,
        };
        Ok((Some(grad.clone()), Some(g)))
    }
}
