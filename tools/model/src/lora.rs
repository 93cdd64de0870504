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
//!
//! On the CPU in F32 a layer with an adapter is one graph node, [`lora_linear`] (a `CustomOp3`
//! over `x`, A, B with a closed-form backward, on [`crate::matmul::gemm`]), instead of about six
//! (each costing candle's backward a zero-filled activation-sized gradient and an add);
//! `Linear::use_fused_op = false` keeps the composition, as do other devices and dtypes.

use crate::frozen::Frozen;
use crate::fused::CpuF32;
use crate::matmul::{Mat, MatMut, Threads, gemm, product};
use crate::rng::Rng;
use anyhow::{Result, bail};
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CudaStorage, D, DType, Layout, Shape, Tensor, Var};
use candle_nn::VarMap;
use std::sync::OnceLock;

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

/// A linear layer: frozen weight `[out, in]` (a tensor, or blocks under QLoRA), optional bias,
/// optional LoRA adapter.
#[derive(Debug, Clone)]
pub struct Linear {
    /// Hugging Face module path, e.g. `model.layers.0.self_attn.q_proj`.
    pub name: String,
    pub weight: Frozen,
    pub bias: Option<Tensor>,
    pub lora: Option<LoraAdapter>,
    /// Use [`frozen_linear`] for the base matmul (default true); false = candle's matmul (a
    /// tensor weight only).
    pub use_frozen_op: bool,
    /// With an adapter, on the CPU in F32 (and `use_frozen_op`): compute the whole layer,
    /// base and LoRA term, as one graph node ([`lora_linear`], default true); false = the
    /// composition of frozen matmul, dropout and two LoRA matmuls.
    pub use_fused_op: bool,
    /// The weight's quantized blocks as the GGUF stores them, for inference only
    /// ([`crate::CausalLm::quantize_for_inference`]); training never reads them.
    pub quantized: Option<crate::model::InferBlocks>,
}

/// Per-call options of a forward pass.
#[derive(Debug, Clone, Copy, Default)]
pub struct ForwardMode {
    /// `Some(seed)` enables LoRA dropout (training); each layer derives its own mask stream.
    pub dropout_seed: Option<u64>,
}

impl Linear {
    pub fn new(name: &str, weight: impl Into<Frozen>, bias: Option<Tensor>) -> Self {
        Self {
            name: name.to_string(),
            weight: weight.into(),
            bias,
            lora: None,
            use_frozen_op: true,
            use_fused_op: true,
            quantized: None,
        }
    }

    /// No adapter, no bias, and the frozen-linear op in use: the layer is `x W^T` with a
    /// frozen `W` (fusable into larger ops).
    pub fn is_frozen(&self) -> bool {
        self.lora.is_none() && self.bias.is_none() && self.use_frozen_op
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
        let dev = &self.weight.device();
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
        let dev = &self.weight.device();
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

    /// Whether [`Self::forward`] takes the single-op path ([`lora_linear`]) for input `x`.
    pub fn uses_fused_op(&self, x: &Tensor) -> bool {
        let f32_cpu = |t: &Tensor| crate::fused::supported(t) && t.is_contiguous();
        self.use_fused_op
            && self.use_frozen_op
            && self.lora.is_some()
            && crate::fused::supported(x)
            && self.weight.dense().is_none_or(f32_cpu)
            && self.bias.as_ref().is_none_or(f32_cpu)
    }

    pub fn forward(&self, x: &Tensor, mode: ForwardMode) -> Result<Tensor> {
        if let Some(l) = self.lora.as_ref().filter(|_| self.uses_fused_op(x)) {
            let dropout = match mode.dropout_seed {
                Some(seed) if l.dropout > 0.0 => Some((l.dropout, seed, self.name.as_str())),
                _ => None,
            };
            return lora_linear(
                x,
                &self.weight,
                self.bias.as_ref(),
                l.a.as_tensor(),
                l.b.as_tensor(),
                l.scale,
                dropout,
            );
        }
        let mut y = match (&self.weight, self.use_frozen_op) {
            (Frozen::Dense(w), false) => plain_linear(x, w)?,
            (w, _) => w.linear(x)?,
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

/// Which of `n` elements dropout keeps, in element order: the stream of [`Rng::derive`]`(seed,
/// name)`, one draw per element, dropped when the draw is below `p`.
fn dropout_keep(n: usize, p: f32, seed: u64, name: &str) -> Vec<bool> {
    let mut rng = Rng::derive(seed, name);
    (0..n).map(|_| rng.uniform() >= f64::from(p)).collect()
}

/// The factor kept elements are multiplied by (inverted dropout).
fn dropout_factor(p: f32) -> f32 {
    1.0 / (1.0 - p)
}

/// Inverted dropout with a mask from our seeded RNG (deterministic).
fn dropout(x: &Tensor, p: f32, seed: u64, name: &str) -> Result<Tensor> {
    let keep = dropout_factor(p);
    let mask: Vec<f32> = dropout_keep(x.elem_count(), p, seed, name)
        .into_iter()
        .map(|k| if k { keep } else { 0.0 })
        .collect();
    let mask = Tensor::from_vec(mask, x.shape(), x.device())?.to_dtype(x.dtype())?;
    Ok((x * mask)?)
}

/// `y = x W^T (+ bias) + scale · (dropout(x) A^T) B^T` as ONE graph node (CPU, F32): a
/// `CustomOp3(x, A, B)` whose backward returns `dx` (when `x` tracks), `dA` and `dB` in closed
/// form. The composition it replaces records about six nodes per layer, each costing candle's
/// backward a zero-filled gradient buffer and an add. `dropout`: `(p, seed, layer name)`, the
/// same mask as the composed path. Callers check [`Linear::uses_fused_op`] first.
pub fn lora_linear(
    x: &Tensor,
    w: &Frozen,
    bias: Option<&Tensor>,
    a: &Tensor,
    b: &Tensor,
    scale: f64,
    dropout: Option<(f32, u64, &str)>,
) -> Result<Tensor> {
    let w = match w {
        Frozen::Dense(t) => Frozen::Dense(t.detach()),
        q => q.clone(),
    };
    let op = LoraLinear {
        w,
        bias: bias.map(Tensor::detach),
        scale: scale as f32,
        dropout: dropout.map(|(p, seed, name)| (p, seed, name.to_string())),
        saved: OnceLock::new(),
    };
    Ok(x.contiguous()?
        .apply_op3(&a.contiguous()?, &b.contiguous()?, op)?)
}

struct LoraLinear {
    /// Frozen `[n, k]`: F32, contiguous, on the CPU (as is `bias` `[n]`), or blocks.
    w: Frozen,
    bias: Option<Tensor>,
    scale: f32,
    dropout: Option<(f32, u64, String)>,
    /// Set by the forward pass for the backward.
    saved: OnceLock<Saved>,
}

struct Saved {
    /// `h = dropout(x) A^T`, `[m, r]`.
    h: Vec<f32>,
    /// Dropout's kept elements of `x` (`None` without dropout).
    keep: Option<Vec<bool>>,
}

/// `dropout(x)`: `x` with the dropped elements zeroed and the kept ones scaled.
fn apply_keep(x: &[f32], keep: &[bool], p: f32) -> Vec<f32> {
    let f = dropout_factor(p);
    x.iter()
        .zip(keep)
        .map(|(&v, &k)| v * if k { f } else { 0.0 })
        .collect()
}

/// `(m, k)` of a `[.., k]` tensor's layout.
pub(crate) fn rows_cols(shape: &Shape) -> (usize, usize) {
    let k = shape.dims().last().copied().unwrap_or(1);
    (shape.elem_count() / k.max(1), k)
}

impl candle_core::CustomOp3 for LoraLinear {
    fn name(&self) -> &'static str {
        "lora-linear"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        const WHAT: &str = "lora_linear";
        let x = crate::fused::f32_slice(s1, l1, WHAT)?;
        let a = crate::fused::f32_slice(s2, l2, WHAT)?;
        let b = crate::fused::f32_slice(s3, l3, WHAT)?;
        let (m, k) = rows_cols(l1.shape());
        let (r, ka) = l2.shape().dims2()?;
        let (n, rb) = l3.shape().dims2()?;
        let (nw, kw) = self.w.dims2()?;
        if ka != k || kw != k || rb != r || nw != n {
            candle_core::bail!(
                "{WHAT}: input {:?}, weight {:?}, A {:?}, B {:?} do not fit",
                l1.shape().dims(),
                (nw, kw),
                l2.shape().dims(),
                l3.shape().dims()
            );
        }
        let mut y = self.w.times_t(x, m)?;
        if let Some(bias) = &self.bias {
            let bias_data = CpuF32::new(bias);
            let bias = bias_data.slice(WHAT)?;
            if bias.len() != n {
                candle_core::bail!("{WHAT}: bias has {} values for {n} outputs", bias.len());
            }
            for row in y.chunks_exact_mut(n) {
                for (yv, bv) in row.iter_mut().zip(bias) {
                    *yv += bv;
                }
            }
        }
        let keep = self
            .dropout
            .as_ref()
            .map(|(p, seed, name)| (*p, dropout_keep(m * k, *p, *seed, name)));
        let xd = keep.as_ref().map(|(p, keep)| apply_keep(x, keep, *p));
        let xd_or_x = Mat::dense(xd.as_deref().unwrap_or(x), m, k);
        let h = product(xd_or_x, Mat::dense(a, r, k).t(), 1.0)?;
        gemm(
            MatMut::dense(&mut y, m, n),
            true,
            Mat::dense(&h, m, r),
            Mat::dense(b, n, r).t(),
            self.scale,
            Threads::Pool,
        )?;
        let saved = Saved {
            h,
            keep: keep.map(|(_, k)| k),
        };
        if self.saved.set(saved).is_err() {
            candle_core::bail!("{WHAT}: op applied twice");
        }
        let mut dims = l1.shape().dims().to_vec();
        if let Some(last) = dims.last_mut() {
            *last = n;
        }
        Ok((CpuStorage::F32(y), Shape::from(dims)))
    }

    fn bwd(
        &self,
        x_t: &Tensor,
        a_t: &Tensor,
        b_t: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        const WHAT: &str = "lora_linear backward";
        let Some(saved) = self.saved.get() else {
            candle_core::bail!("{WHAT}: no saved forward state");
        };
        let g_t = grad.contiguous()?;
        let (g_data, x_data) = (CpuF32::new(&g_t), CpuF32::new(x_t));
        let (a_data, b_data) = (CpuF32::new(a_t), CpuF32::new(b_t));
        let (g, x) = (g_data.slice(WHAT)?, x_data.slice(WHAT)?);
        let (a, b) = (a_data.slice(WHAT)?, b_data.slice(WHAT)?);
        let (m, k) = rows_cols(x_t.shape());
        let (r, n) = (a_t.dim(0)?, b_t.dim(0)?);
        if g.len() != m * n || saved.h.len() != m * r {
            candle_core::bail!("{WHAT}: gradient {:?} does not fit", grad.dims());
        }
        let scale = self.scale;
        // gB = g·B, [m, r].
        let gb = product(Mat::dense(g, m, n), Mat::dense(b, n, r), 1.0)?;
        // dB = scale·g^T·h, [n, r].
        let db = product(Mat::dense(g, m, n).t(), Mat::dense(&saved.h, m, r), scale)?;
        // dA = scale·gB^T·dropout(x), [r, k].
        let p = self.dropout.as_ref().map_or(0.0, |d| d.0);
        let xd = saved.keep.as_ref().map(|keep| apply_keep(x, keep, p));
        let xd_or_x = Mat::dense(xd.as_deref().unwrap_or(x), m, k);
        let da = product(Mat::dense(&gb, m, r).t(), xd_or_x, scale)?;
        drop(xd);
        // dx = g·W + scale·(gB·A) [⊙ dropout mask], [m, k].
        let dx = if x_t.track_op() {
            let mut dx = vec![0f32; m * k];
            self.w.grad_into(g, m, &mut dx, false)?;
            match &saved.keep {
                None => gemm(
                    MatMut::dense(&mut dx, m, k),
                    true,
                    Mat::dense(&gb, m, r),
                    Mat::dense(a, r, k),
                    scale,
                    Threads::Pool,
                )?,
                Some(keep) => {
                    let t = product(Mat::dense(&gb, m, r), Mat::dense(a, r, k), scale)?;
                    let f = dropout_factor(p);
                    for ((d, tv), &kept) in dx.iter_mut().zip(&t).zip(keep) {
                        *d += tv * if kept { f } else { 0.0 };
                    }
                }
            }
            Some(Tensor::from_vec(dx, x_t.shape(), x_t.device())?)
        } else {
            None
        };
        Ok((
            dx,
            Some(Tensor::from_vec(da, a_t.shape(), a_t.device())?),
            Some(Tensor::from_vec(db, b_t.shape(), b_t.device())?),
        ))
    }
}

/// `x W^T` with candle's matmul (records gradients for both operands).
pub fn plain_linear(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let wt = w.t()?;
    Ok(match x.dims() {
        [b, s, k] => x.reshape((b * s, *k))?.matmul(&wt)?.reshape((*b, *s, ()))?,
        _ => x.matmul(&wt)?,
    })
}

/// `x W^T` for a frozen `W`: the backward pass returns only `dL/dx = dL/dy · W`. `x` `[.., k]`
/// goes into the op as it is (no reshape nodes: each would cost backward a zero-filled
/// activation-sized gradient and an add).
pub fn frozen_linear(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    // Records the op only when x needs a gradient (w never does).
    Ok(x.contiguous()?.apply_op2(w, FrozenMatmul)?)
}

/// `x [.., k] · w[n, k]^T` → `[.., n]`; backward: input gradient only.
struct FrozenMatmul;

fn frozen_fwd<S: BackendStorage>(
    s1: &S,
    l1: &Layout,
    s2: &S,
    l2: &Layout,
) -> candle_core::Result<(S, Shape)> {
    let (m, k) = rows_cols(l1.shape());
    let (n, k2) = l2.shape().dims2()?;
    if k != k2 || l1.dims().is_empty() {
        candle_core::bail!(
            "frozen_linear: input {:?} does not fit weight {:?}",
            l1.dims(),
            l2.dims()
        );
    }
    if !l1.is_contiguous() {
        candle_core::bail!("frozen_linear: input is not contiguous");
    }
    // The contiguous `[.., k]` input read as `[m, k]`.
    let x2 = Layout::contiguous_with_offset((m, k), l1.start_offset());
    let wt = l2.transpose(0, 1)?;
    let out = s1.matmul(s2, (1, m, n, k), &x2, &wt)?;
    let mut dims = l1.dims().to_vec();
    if let Some(last) = dims.last_mut() {
        *last = n;
    }
    Ok((out, Shape::from(dims)))
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
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let (m, n) = rows_cols(grad.shape());
        let dx = grad.reshape((m, n))?.matmul(w)?.reshape(x.shape())?;
        Ok((Some(dx), None))
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
    let list: Vec<Option<&Tensor>> = params
        .iter()
        .map(|(_, var)| grads.get(var.as_tensor()))
        .collect();
    check_gradient_list(&list, params)
}

/// [`check_gradients`] on gradients given in the order of `params` (`None`: no gradient reached it),
/// as a training loop holds them after summing its shards.
pub fn check_gradient_list(grads: &[Option<&Tensor>], params: &[(String, Var)]) -> Result<()> {
    if grads.len() != params.len() {
        bail!(
            "{} gradients for {} trainable tensors",
            grads.len(),
            params.len()
        );
    }
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
    for ((name, _), g) in params.iter().zip(grads) {
        let Some(g) = g else {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn rand(shape: &[usize], seed: u64, std: f64) -> Result<Tensor> {
        Ok(crate::fixtures::random_normal(
            "lora-test",
            shape,
            seed,
            std,
        )?)
    }

    fn rel_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
        Ok(crate::fixtures::max_rel_diff(a, b)?)
    }

    /// A layer `[6, 8]` with rank-3 LoRA, random non-zero A and B.
    fn layer(bias: bool, dropout: f32) -> Result<Linear> {
        let w = rand(&[6, 8], 1, 0.3)?;
        let bias = if bias {
            Some(rand(&[6], 2, 0.5)?)
        } else {
            None
        };
        let mut lin = Linear::new("model.layers.0.self_attn.q_proj", w, bias);
        let (a, b) = (rand(&[3, 8], 3, 0.4)?, rand(&[6, 3], 4, 0.4)?);
        lin.attach_lora_from(&a, &b, 2.5, dropout, &VarMap::new())?;
        Ok(lin)
    }

    /// Output and gradients (x when it tracks, A, B) of `Σ y ⊙ weights`.
    fn run(
        lin: &Linear,
        x: &Tensor,
        mode: ForwardMode,
        weights: &Tensor,
    ) -> Result<(Tensor, Option<Tensor>, Tensor, Tensor)> {
        let y = lin.forward(x, mode)?;
        let grads = (&y * weights)?.sum_all()?.backward()?;
        let l = lin.lora.as_ref().expect("adapter");
        let get = |t: &Tensor| grads.get(t).cloned();
        let (Some(da), Some(db)) = (get(l.a.as_tensor()), get(l.b.as_tensor())) else {
            panic!("no gradient for A or B");
        };
        Ok((y, get(x), da, db))
    }

    #[test]
    fn fused_op_matches_the_composed_path() -> Result<()> {
        for rows in [5, 301] {
            fused_op_matches_the_composed_path_on(rows)?;
        }
        Ok(())
    }

    fn fused_op_matches_the_composed_path_on(rows: usize) -> Result<()> {
        let weights = rand(&[2, rows, 6], 5, 1.0)?;
        for bias in [false, true] {
            for dropout in [0.0, 0.3] {
                for x_tracks in [true, false] {
                    let fused = layer(bias, dropout)?;
                    let mut composed = fused.clone();
                    composed.use_fused_op = false;
                    let x0 = rand(&[2, rows, 8], 6, 1.0)?;
                    let x = if x_tracks {
                        Var::from_tensor(&x0)?.as_tensor().clone()
                    } else {
                        x0
                    };
                    assert!(fused.uses_fused_op(&x) && !composed.uses_fused_op(&x));
                    let mode = ForwardMode {
                        dropout_seed: Some(11),
                    };
                    let what =
                        format!("{rows} rows, bias {bias}, dropout {dropout}, x tracks {x_tracks}");
                    let (y1, dx1, da1, db1) = run(&fused, &x, mode, &weights)?;
                    let (y2, dx2, da2, db2) = run(&composed, &x, mode, &weights)?;
                    assert!(rel_diff(&y1, &y2)? < 1e-5, "y, {what}");
                    assert!(rel_diff(&da1, &da2)? < 1e-5, "dA, {what}");
                    assert!(rel_diff(&db1, &db2)? < 1e-5, "dB, {what}");
                    match (dx1, dx2) {
                        (Some(dx1), Some(dx2)) => {
                            assert!(x_tracks, "{what}");
                            assert!(rel_diff(&dx1, &dx2)? < 1e-5, "dx, {what}");
                            assert!(dx1.abs()?.sum_all()?.to_scalar::<f32>()? > 1e-3);
                        }
                        (None, None) => assert!(!x_tracks, "{what}"),
                        _ => panic!("dx present on one path only, {what}"),
                    }
                    for g in [&da1, &db1] {
                        assert!(g.abs()?.sum_all()?.to_scalar::<f32>()? > 1e-3, "{what}");
                    }
                    // Dropout is really on (and off without a seed): the outputs differ.
                    let (y0, ..) = run(&fused, &x, ForwardMode::default(), &weights)?;
                    let changed = rel_diff(&y1, &y0)? > 1e-3;
                    assert_eq!(changed, dropout > 0.0, "{what}");
                }
            }
        }
        Ok(())
    }

    #[test]
    fn frozen_linear_matches_matmul_without_reshape_nodes() -> Result<()> {
        let w = rand(&[6, 8], 1, 0.3)?;
        let weights = rand(&[2, 5, 6], 5, 1.0)?;
        for shape in [&[2, 5, 8][..], &[10, 8], &[8]] {
            let x = Var::from_tensor(&rand(shape, 9, 1.0)?)?;
            let y1 = frozen_linear(x.as_tensor(), &w)?;
            let mut out = shape.to_vec();
            *out.last_mut().expect("non-empty") = 6;
            let y2 = x
                .as_tensor()
                .reshape((x.elem_count() / 8, 8))?
                .matmul(&w.t()?)?
                .reshape(out)?;
            assert!(rel_diff(&y1, &y2)? < 1e-6, "{shape:?}");
            let weights = weights.flatten_all()?.narrow(0, 0, y1.elem_count())?;
            let g1 = (y1.flatten_all()? * &weights)?.sum_all()?.backward()?;
            let g2 = (y2.flatten_all()? * &weights)?.sum_all()?.backward()?;
            let (Some(d1), Some(d2)) = (g1.get(x.as_tensor()), g2.get(x.as_tensor())) else {
                panic!("missing gradient");
            };
            assert!(rel_diff(d1, d2)? < 1e-6, "{shape:?}");
            assert!(g1.get(&w).is_none(), "no gradient for the frozen weight");
        }
        Ok(())
    }

    /// The same bits whatever the thread count (gemm splits rows and columns, never the sums).
    #[test]
    fn fused_op_is_deterministic_across_thread_counts() -> Result<()> {
        let (n, k, r) = (192, 256, 16);
        let mut lin = Linear::new("l", rand(&[n, k], 1, 0.05)?, Some(rand(&[n], 2, 0.1)?));
        let (a, b) = (rand(&[r, k], 3, 0.05)?, rand(&[n, r], 4, 0.05)?);
        lin.attach_lora_from(&a, &b, 2.0, 0.1, &VarMap::new())?;
        let x = Var::from_tensor(&rand(&[2, 96, k], 5, 1.0)?)?;
        let weights = rand(&[2, 96, n], 6, 1.0)?;
        let mode = ForwardMode {
            dropout_seed: Some(3),
        };
        let bits = |threads: usize| -> Result<Vec<Vec<u32>>> {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()?;
            pool.install(|| {
                let (y, dx, da, db) = run(&lin, x.as_tensor(), mode, &weights)?;
                let dx = dx.expect("x tracks");
                Ok(crate::fixtures::bits(&[y, dx, da, db])?)
            })
        };
        assert!(bits(1)? == bits(4)?);
        Ok(())
    }

    #[test]
    fn fused_op_takes_strided_inputs_and_keeps_other_dtypes_composed() -> Result<()> {
        let lin = layer(true, 0.0)?;
        let mut composed = lin.clone();
        composed.use_fused_op = false;
        // A transposed (non-contiguous) input.
        let xt = rand(&[2, 8, 5], 7, 1.0)?.transpose(1, 2)?;
        assert!(!xt.is_contiguous() && lin.uses_fused_op(&xt));
        let mode = ForwardMode::default();
        let diff = rel_diff(&lin.forward(&xt, mode)?, &composed.forward(&xt, mode)?)?;
        assert!(diff < 1e-5);
        // 2-D input.
        let x2 = rand(&[4, 8], 8, 1.0)?;
        let diff = rel_diff(&lin.forward(&x2, mode)?, &composed.forward(&x2, mode)?)?;
        assert!(diff < 1e-5);
        // F64 input: not fused.
        assert!(!lin.uses_fused_op(&x2.to_dtype(DType::F64)?));
        Ok(())
    }
}
