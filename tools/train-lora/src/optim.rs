//! AdamW, learning-rate schedules and global-norm clipping over named trainable tensors.
//!
//! Our own AdamW rather than `candle_nn::AdamW`: candle keeps its first and second moments in private
//! fields, so a checkpoint could not save them and `--resume` could not continue exactly. The update
//! is the same as candle's and PyTorch's (decoupled weight decay, bias-corrected moments).

use anyhow::{Context, Result, bail};
use candle_core::{DType, Device, Tensor, Var};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;

/// AdamW hyper-parameters.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
}

/// AdamW over `params` (name, variable), moments kept in f32.
pub struct AdamW {
    pub config: AdamWConfig,
    params: Vec<(String, Var)>,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    /// Updates done so far.
    pub step: u64,
}

impl AdamW {
    pub fn new(params: Vec<(String, Var)>, config: AdamWConfig) -> Result<Self> {
        let mut m = Vec::with_capacity(params.len());
        for (_, p) in &params {
            m.push(Tensor::zeros(p.shape(), DType::F32, p.device())?);
        }
        let v = m.clone();
        Ok(Self {
            config,
            params,
            m,
            v,
            step: 0,
        })
    }

    pub fn params(&self) -> &[(String, Var)] {
        &self.params
    }

    /// One update with learning rate `lr`; `grads[i]` belongs to `params[i]`.
    pub fn step(&mut self, grads: &[Tensor], lr: f64) -> Result<()> {
        if grads.len() != self.params.len() {
            bail!(
                "{} gradients for {} parameters",
                grads.len(),
                self.params.len()
            );
        }
        self.step += 1;
        let c = self.config;
        let t = self.step as i32;
        let scale_m = 1.0 / (1.0 - c.beta1.powi(t));
        let scale_v = 1.0 / (1.0 - c.beta2.powi(t));
        for (i, (_, var)) in self.params.iter().enumerate() {
            let g = grads[i].to_dtype(DType::F32)?;
            let m = ((&self.m[i] * c.beta1)? + (&g * (1.0 - c.beta1))?)?;
            let v = ((&self.v[i] * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?;
            let update = ((&m * scale_m)? / ((&v * scale_v)?.sqrt()? + c.eps)?)?;
            let theta = var.as_tensor().to_dtype(DType::F32)?;
            let next = ((theta * (1.0 - lr * c.weight_decay))? - (update * lr)?)?;
            var.set(&next.to_dtype(var.dtype())?)?;
            self.m[i] = m;
            self.v[i] = v;
        }
        Ok(())
    }

    /// The moments as named tensors (`<name>.exp_avg`, `<name>.exp_avg_sq`), for a checkpoint.
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::with_capacity(2 * self.params.len());
        for (i, (name, _)) in self.params.iter().enumerate() {
            out.push((format!("{name}.exp_avg"), self.m[i].clone()));
            out.push((format!("{name}.exp_avg_sq"), self.v[i].clone()));
        }
        out
    }

    /// Restores moments saved by [`AdamW::state_tensors`] and the update count.
    pub fn load_state(
        &mut self,
        tensors: &HashMap<String, Tensor>,
        step: u64,
        device: &Device,
    ) -> Result<()> {
        for (i, (name, p)) in self.params.iter().enumerate() {
            for (key, slot) in [("exp_avg", &mut self.m[i]), ("exp_avg_sq", &mut self.v[i])] {
                let full = format!("{name}.{key}");
                let t = tensors
                    .get(&full)
                    .with_context(|| format!("optimizer state has no {full}"))?;
                if t.dims() != p.dims() {
                    bail!(
                        "optimizer state {full} has shape {:?}, parameter has {:?}",
                        t.dims(),
                        p.dims()
                    );
                }
                *slot = t.to_device(device)?.to_dtype(DType::F32)?;
            }
        }
        self.step = step;
        Ok(())
    }

    /// Saves the moments to a safetensors file.
    pub fn save(&self, path: &Path) -> Result<()> {
        save_tensors(path, &self.state_tensors())
    }
}

/// Writes named tensors to `path` atomically, as safetensors.
pub fn save_tensors(path: &Path, tensors: &[(String, Tensor)]) -> Result<()> {
    // Serialised in memory (the tensors of a LoRA run are small), written by the core's one writer.
    let map: std::collections::BTreeMap<&str, &Tensor> =
        tensors.iter().map(|(k, t)| (k.as_str(), t)).collect();
    let bytes = safetensors::serialize(map, None)
        .map_err(|e| anyhow::anyhow!("{}: cannot serialise: {e}", path.display()))?;
    ftkit_core::io::write_atomic(path, &bytes)
}

/// Loads every tensor of a safetensors file onto `device`.
pub fn load_tensors(path: &Path, device: &Device) -> Result<HashMap<String, Tensor>> {
    candle_core::safetensors::load(path, device)
        .with_context(|| format!("{}: cannot read", path.display()))
}

/// Learning-rate schedule after warm-up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    Cosine,
    Linear,
    Constant,
}

/// The learning rate of update `step` (0-based) out of `total`, as transformers' schedules compute it:
/// linear warm-up from 0 over `warmup` updates, then cosine to 0, linear to 0, or constant.
pub fn learning_rate(schedule: Schedule, peak: f64, step: u64, warmup: u64, total: u64) -> f64 {
    if step < warmup {
        return peak * step as f64 / warmup.max(1) as f64;
    }
    let span = total.saturating_sub(warmup).max(1) as f64;
    let progress = (step - warmup) as f64 / span;
    match schedule {
        Schedule::Constant => peak,
        Schedule::Linear => peak * (1.0 - progress).max(0.0),
        Schedule::Cosine => peak * 0.5 * (1.0 + (std::f64::consts::PI * progress.min(1.0)).cos()),
    }
}

/// Global L2 norm of `grads`; when above `max_norm` (> 0) scales them down to it. Returns the norm before.
pub fn clip_global_norm(grads: &mut [Tensor], max_norm: f64) -> Result<f64> {
    let mut sq = 0f64;
    for g in grads.iter() {
        sq += g
            .to_dtype(DType::F32)?
            .sqr()?
            .sum_all()?
            .to_scalar::<f32>()? as f64;
    }
    let norm = sq.sqrt();
    if !norm.is_finite() {
        bail!("gradient norm is {norm}: training diverged (lower --lr?)");
    }
    if max_norm > 0.0 && norm > max_norm {
        let scale = max_norm / (norm + 1e-6);
        for g in grads.iter_mut() {
            *g = (&*g * scale)?;
        }
    }
    Ok(norm)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_match_transformers() {
        let lr = |s, step| learning_rate(s, 1.0, step, 10, 110);
        assert_eq!(lr(Schedule::Cosine, 0), 0.0);
        assert!((lr(Schedule::Cosine, 5) - 0.5).abs() < 1e-12);
        assert!((lr(Schedule::Cosine, 10) - 1.0).abs() < 1e-12);
        assert!((lr(Schedule::Cosine, 60) - 0.5).abs() < 1e-12);
        assert!(lr(Schedule::Cosine, 110).abs() < 1e-12);
        assert!((lr(Schedule::Linear, 60) - 0.5).abs() < 1e-12);
        assert_eq!(lr(Schedule::Constant, 100), 1.0);
    }

    #[test]
    fn adamw_matches_the_formula() -> Result<()> {
        let dev = Device::Cpu;
        let w = Var::from_slice(&[1.0f32, -2.0], 2, &dev)?;
        let cfg = AdamWConfig {
            weight_decay: 0.1,
            ..Default::default()
        };
        let mut opt = AdamW::new(vec![("w".into(), w.clone())], cfg)?;
        let g = Tensor::from_slice(&[0.5f32, 0.25], 2, &dev)?;
        opt.step(std::slice::from_ref(&g), 0.01)?;
        // First step: m̂ = g, v̂ = g², update = g / (|g| + eps) ≈ sign(g).
        let got = w.as_tensor().to_vec1::<f32>()?;
        let want = [1.0 * (1.0 - 0.001) - 0.01, -2.0 * (1.0 - 0.001) - 0.01];
        for (a, b) in got.iter().zip(want) {
            assert!((*a as f64 - b).abs() < 1e-6, "{got:?} vs {want:?}");
        }
        // Same trajectory as candle's AdamW over a few steps.
        let w2 = Var::from_slice(&[1.0f32, -2.0], 2, &dev)?;
        let mut theirs = candle_nn::AdamW::new(
            vec![w2.clone()],
            candle_nn::ParamsAdamW {
                lr: 0.01,
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                weight_decay: 0.1,
            },
        )?;
        let w3 = Var::from_slice(&[1.0f32, -2.0], 2, &dev)?;
        let mut ours = AdamW::new(vec![("w".into(), w3.clone())], cfg)?;
        use candle_nn::Optimizer;
        for _ in 0..5 {
            let loss = (w2.as_tensor().sqr()?.sum_all()? * 0.5)?;
            theirs.backward_step(&loss)?;
            let g = w3.as_tensor().clone();
            ours.step(&[g], 0.01)?;
        }
        let (a, b) = (
            w2.as_tensor().to_vec1::<f32>()?,
            w3.as_tensor().to_vec1::<f32>()?,
        );
        for (x, y) in a.iter().zip(&b) {
            assert!((x - y).abs() < 1e-6, "{a:?} vs {b:?}");
        }
        Ok(())
    }

    #[test]
    fn state_round_trips() -> Result<()> {
        let dev = Device::Cpu;
        let dir = tempfile::tempdir()?;
        let w = Var::from_slice(&[1.0f32, 2.0, 3.0], 3, &dev)?;
        let mut opt = AdamW::new(vec![("a".into(), w.clone())], AdamWConfig::default())?;
        opt.step(&[Tensor::from_slice(&[0.1f32, 0.2, 0.3], 3, &dev)?], 0.1)?;
        let path = dir.path().join("opt.safetensors");
        opt.save(&path)?;
        let mut fresh = AdamW::new(vec![("a".into(), w)], AdamWConfig::default())?;
        fresh.load_state(&load_tensors(&path, &dev)?, opt.step, &dev)?;
        for ((_, a), (_, b)) in opt.state_tensors().iter().zip(fresh.state_tensors().iter()) {
            assert_eq!(a.to_vec1::<f32>()?, b.to_vec1::<f32>()?);
        }
        Ok(())
    }

    #[test]
    fn clipping_scales_to_max_norm() -> Result<()> {
        let dev = Device::Cpu;
        let mut g = vec![
            Tensor::from_slice(&[3.0f32], 1, &dev)?,
            Tensor::from_slice(&[4.0f32], 1, &dev)?,
        ];
        let n = clip_global_norm(&mut g, 1.0)?;
        assert!((n - 5.0).abs() < 1e-9);
        let after = clip_global_norm(&mut g, 0.0)?;
        assert!((after - 1.0).abs() < 1e-5, "{after}");
        Ok(())
    }
}
