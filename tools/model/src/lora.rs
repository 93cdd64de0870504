//! Linear layers with a frozen base weight and an optional LoRA adapter.
//!
//! `y = x W^T (+ b) + scale · (dropout(x) A^T) B^T`, A `[r, in]` Kaiming-uniform (PEFT's
//! `kaiming_uniform_(a=√5)`, i.e. U(−1/√in, 1/√in)), B `[out, r]` zeros, scale `alpha/r`
//! (rsLoRA: `alpha/√r`). A and B are F32 [`Var`]s in a [`VarMap`] under their PEFT key names;
//! the base weight is a plain tensor (never a Var).
//!
//! The base matmul runs through [`frozen_linear`], a candle `CustomOp2` whose backward returns
//! only the input gradient: candle's own matmul backward also computes (and keeps) a
//! weight-sized gradient for the frozen weight.

use crate::rng::Rng;
use anyhow::{Result, bail};
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CudaStorage, D, DType, Layout, Shape, Tensor, Var};
use candle_nn::VarMap;

/// Module names LoRA can target (PEFT's `all-linear` for these models = all of them).
pub const ALL_LINEAR: [&str; 7] = [
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
];

/// Parse `q_proj,v_proj` or `all-linear` into module names (deduplicated, in [`ALL_LINEAR`] order).
pub fn parse_targets(s: &str) -> Result<Vec<String>> {
    let mut want: Vec<&str> = Vec::new();
    for t in s.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        if t == "all-linear" || t == "all_linear" {
            want.extend(ALL_LINEAR);
        } else if ALL_LINEAR.contains(&t) {
            want.push(t);
        } else {
            bail!(
                "unknown LoRA target {t:?} (expected all-linear or some of {})",
                ALL_LINEAR.join(",")
            );
        }
    }
    if want.is_empty() {
        bail!("no LoRA target given");
    }
    Ok(ALL_LINEAR
        .iter()
        .filter(|n| want.contains(n))
        .map(|n| n.to_string())
        .collect())
}

/// LoRA hyper-parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraConfig {
    pub rank: usize,
    pub alpha: f64,
    pub dropout: f32,
    pub rslora: bool,
    /// Module names, see [`parse_targets`].
    pub targets: Vec<String>,
    /// Seed of A's initialisation (each tensor gets its own stream derived from its key).
    pub seed: u64,
}

impl LoraConfig {
    /// `alpha / r`, or `alpha / √r` with rsLoRA.
    pub fn scale(&self) -> f64 {
        if self.rslora {
            self.alpha / (self.rank as f64).sqrt()
        } else {
            self.alpha / self.rank as f64
        }
    }
}

/// The trainable part of a LoRA layer.
#[derive(Debug, Clone)]
pub struct LoraAdapter {
    /// `[r, in]`, F32.
    pub a: Var,
    /// `[out, r]`, F32.
    pub b: Var,
    pub scale: f64,
    pub dropout: f32,
}

/// A linear layer: frozen weight `[out, in]`, optional bias, optional LoRA adapter.
#[derive(Debug, Clone)]
pub struct Linear {
    /// Hugging Face module path, e.g. `model.layers.0.self_attn.q_proj`.
    pub name: String,
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    pub lora: Option<LoraAdapter>,
    /// Use [`frozen_linear`] for the base matmul (default true); false = candle's matmul.
    pub use_frozen_op: bool,
}

/// Per-call options of a forward pass.
#[derive(Debug, Clone, Copy, Default)]
pub struct ForwardMode {
    /// `Some(seed)` enables LoRA dropout (training); each layer derives its own mask stream.
    pub dropout_seed: Option<u64>,
}

impl Linear {
    pub fn new(name: &str, weight: Tensor, bias: Option<Tensor>) -> Self {
        Self {
            name: name.to_string(),
            weight,
            bias,
            lora: None,
            use_frozen_op: true,
        }
    }

    /// Module's last path component (`q_proj`).
    pub fn module(&self) -> &str {
        self.name.rsplit('.').next().unwrap_or(&self.name)
    }

    /// PEFT key prefix: `base_model.model.<name>`.
    pub fn peft_prefix(&self) -> String {
        format!("base_model.model.{}", self.name)
    }

    /// Create A and B for this layer in `varmap` (keys `<peft_prefix>.lora_A.weight`, `...lora_B.weight`).
    pub fn attach_lora(&mut self, cfg: &LoraConfig, varmap: &VarMap) -> Result<()> {
        let (out_dim, in_dim) = self.weight.dims2()?;
        let dev = self.weight.device();
        let a_key = format!("{}.lora_A.weight", self.peft_prefix());
        let b_key = format!("{}.lora_B.weight", self.peft_prefix());
        let bound = 1.0 / (in_dim as f64).sqrt();
        let a_vals = Rng::derive(cfg.seed, &a_key).uniform_vec(cfg.rank * in_dim, bound);
        let a = Var::from_tensor(&Tensor::from_vec(a_vals, (cfg.rank, in_dim), dev)?)?;
        let b = Var::zeros((out_dim, cfg.rank), DType::F32, dev)?;
        let mut data = varmap
            .data()
            .lock()
            .map_err(|_| anyhow::anyhow!("varmap lock poisoned"))?;
        data.insert(a_key, a.clone());
        data.insert(b_key, b.clone());
        self.lora = Some(LoraAdapter {
            a,
            b,
            scale: cfg.scale(),
            dropout: cfg.dropout,
        });
        Ok(())
    }

    /// Attach an adapter with given values (e.g. loaded from a PEFT file): A `[r, in]`,
    /// B `[out, r]`, copied into new F32 Vars registered in `varmap` under their PEFT keys.
    pub fn attach_lora_from(
        &mut self,
        a: &Tensor,
        b: &Tensor,
        scale: f64,
        dropout: f32,
        varmap: &VarMap,
    ) -> Result<()> {
        let (out_dim, in_dim) = self.weight.dims2()?;
        let (r, a_in) = a.dims2()?;
        let (b_out, b_r) = b.dims2()?;
        if a_in != in_dim || b_out != out_dim || b_r != r {
            bail!(
                "{}: adapter shapes A {:?} B {:?} do not fit weight [{out_dim}, {in_dim}]",
                self.name,
                a.dims(),
                b.dims()
            );
        }
        let dev = self.weight.device();
        let a = Var::from_tensor(&a.to_dtype(DType::F32)?.to_device(dev)?)?;
        let b = Var::from_tensor(&b.to_dtype(DType::F32)?.to_device(dev)?)?;
        let mut data = varmap
            .data()
            .lock()
            .map_err(|_| anyhow::anyhow!("varmap lock poisoned"))?;
        data.insert(format!("{}.lora_A.weight", self.peft_prefix()), a.clone());
        data.insert(format!("{}.lora_B.weight", self.peft_prefix()), b.clone());
        self.lora = Some(LoraAdapter {
            a,
            b,
            scale,
            dropout,
        });
        Ok(())
    }

    pub fn forward(&self, x: &Tensor, mode: ForwardMode) -> Result<Tensor> {
        let mut y = if self.use_frozen_op {
            frozen_linear(x, &self.weight)?
        } else {
            plain_linear(x, &self.weight)?
        };
        if let Some(b) = &self.bias {
            y = y.broadcast_add(b)?;
        }
        if let Some(l) = &self.lora {
            let dt = x.dtype();
            let a = l.a.as_tensor().to_dtype(dt)?;
            let b = l.b.as_tensor().to_dtype(dt)?;
            let xd = match mode.dropout_seed {
                Some(seed) if l.dropout > 0.0 => dropout(x, l.dropout, seed, &self.name)?,
                _ => x.clone(),
            };
            let h = plain_linear(&xd, &a)?;
            let d = (plain_linear(&h, &b)? * l.scale)?;
            y = (y + d)?;
        }
        Ok(y)
    }
}

/// Inverted dropout with a mask from our seeded RNG (deterministic).
fn dropout(x: &Tensor, p: f32, seed: u64, name: &str) -> Result<Tensor> {
    let n = x.elem_count();
    let mut rng = Rng::derive(seed, name);
    let keep = 1.0 / (1.0 - p);
    let mask: Vec<f32> = (0..n)
        .map(|_| {
            if rng.uniform() < f64::from(p) {
                0.0
            } else {
                keep
            }
        })
        .collect();
    let mask = Tensor::from_vec(mask, x.shape(), x.device())?.to_dtype(x.dtype())?;
    Ok((x * mask)?)
}

/// `x W^T` with candle's matmul (records gradients for both operands).
pub fn plain_linear(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let wt = w.t()?;
    Ok(match x.dims() {
        [b, s, k] => x.reshape((b * s, *k))?.matmul(&wt)?.reshape((*b, *s, ()))?,
        _ => x.matmul(&wt)?,
    })
}

/// `x W^T` for a frozen `W`: the backward pass returns only `dL/dx = dL/dy · W`.
pub fn frozen_linear(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    let k = *dims.last().unwrap_or(&0);
    let m: usize = dims[..dims.len().saturating_sub(1)].iter().product();
    let x2 = x.contiguous()?.reshape((m, k))?;
    // Records the op only when x needs a gradient (w never does).
    let y = x2.apply_op2(w, FrozenMatmul)?;
    let mut out_dims = dims;
    if let Some(last) = out_dims.last_mut() {
        *last = w.dim(0)?;
    }
    Ok(y.reshape(out_dims)?)
}

/// `x [m, k] · w[n, k]^T`; backward: input gradient only.
struct FrozenMatmul;

fn frozen_fwd<S: BackendStorage>(
    s1: &S,
    l1: &Layout,
    s2: &S,
    l2: &Layout,
) -> candle_core::Result<(S, Shape)> {
    let (m, k) = l1.shape().dims2()?;
    let (n, k2) = l2.shape().dims2()?;
    if k != k2 {
        candle_core::bail!("frozen_linear: input has {k} features, weight expects {k2}");
    }
    let wt = l2.transpose(0, 1)?;
    let out = s1.matmul(s2, (1, m, n, k), l1, &wt)?;
    Ok((out, Shape::from((m, n))))
}

impl candle_core::CustomOp2 for FrozenMatmul {
    fn name(&self) -> &'static str {
        "frozen-linear"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        frozen_fwd(s1, l1, s2, l2)
    }

    fn cuda_fwd(
        &self,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        frozen_fwd(s1, l1, s2, l2)
    }

    fn bwd(
        &self,
        _x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        Ok((Some(grad.matmul(w)?), None))
    }
}

/// Check that every trainable tensor got a finite gradient, and that the gradient is non-zero
/// wherever it can be (A's gradient is exactly zero while its B is all zeros, as at init).
/// Fails loudly naming the first offending tensors: the sign that an op without a backward
/// pass (candle#2168) cut the graph.
pub fn check_gradients(
    grads: &candle_core::backprop::GradStore,
    params: &[(String, Var)],
) -> Result<()> {
    let mut missing = Vec::new();
    let mut zero = Vec::new();
    let mut bad = Vec::new();
    let is_zero = |t: &Tensor| -> Result<bool> {
        Ok(t.abs()?
            .flatten_all()?
            .max(D::Minus1)?
            .to_dtype(DType::F32)?
            .to_scalar::<f32>()?
            == 0.0)
    };
    for (name, var) in params {
        let Some(g) = grads.get(var.as_tensor()) else {
            missing.push(name.clone());
            continue;
        };
        let s = g
            .sqr()?
            .sum_all()?
            .to_dtype(DType::F32)?
            .to_scalar::<f32>()?;
        if !s.is_finite() {
            bad.push(name.clone());
        } else if s == 0.0 {
            // A's grad is B^T-weighted: zero is expected while the paired B is zero.
            let paired_b_zero = match name.strip_suffix("lora_A.weight") {
                Some(prefix) => {
                    let b_name = format!("{prefix}lora_B.weight");
                    match params.iter().find(|(n, _)| *n == b_name) {
                        Some((_, b)) => is_zero(b.as_tensor())?,
                        None => false,
                    }
                }
                None => false,
            };
            if !paired_b_zero {
                zero.push(name.clone());
            }
        }
    }
    let show = |v: &[String]| {
        let head: Vec<&str> = v.iter().take(3).map(String::as_str).collect();
        format!("{} ({} in all)", head.join(", "), v.len())
    };
    if !missing.is_empty() {
        bail!(
            "no gradient reached {}: the forward uses an op without a backward pass",
            show(&missing)
        );
    }
    if !bad.is_empty() {
        bail!("non-finite gradient for {}", show(&bad));
    }
    if !zero.is_empty() {
        bail!("all-zero gradient for {}", show(&zero));
    }
    Ok(())
}
