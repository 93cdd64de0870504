//! Our differentiable forward for qwen2 and llama (training: no kv-cache, all-position logits).
//!
//! Only ops with a backward pass: RMSNorm from basic ops (in F32), rotate-half rope from
//! narrow/cat/mul, `candle_nn::ops::softmax` (not the fused `softmax_last_dim`), explicit
//! causal (or block-diagonal, for packing) additive mask, GQA by repeating k/v heads.

use crate::attention::{AttentionSpec, attention};
use crate::config::{Arch, ModelConfig};
use crate::frozen::Frozen;
use crate::gguf::GgufFile;
use crate::lora::{ForwardMode, Linear, LoraConfig};
use crate::quant::{BaseQuant, QuantMatrix};
use anyhow::{Context, Result, bail};
use candle_core::{D, DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};

/// Inputs besides the token ids.
#[derive(Debug, Clone, Default)]
pub struct ForwardOpts {
    /// `[b, s]` u32 segment ids: tokens attend only to earlier tokens of the same segment
    /// (packed examples, padding). `None` = plain causal attention.
    pub segment_ids: Option<Tensor>,
    /// `[b, s]` u32 positions for rope (restart at 0 per packed example). `None` = 0..s.
    pub position_ids: Option<Tensor>,
    pub mode: ForwardMode,
    /// Gradient checkpointing: keep only each decoder layer's input and recompute the layer in
    /// the backward pass ([`crate::checkpoint`]; CPU, F32).
    pub checkpoint: bool,
}

/// What the decoder layers of one forward share.
#[derive(Debug, Clone)]
pub(crate) struct LayerInputs {
    cos: Tensor,
    sin: Tensor,
    mask: Option<Tensor>,
    fused_cpu: bool,
    mode: ForwardMode,
}

/// Segment and position ids for a row packed from examples of the given lengths, padded to
/// `total` (padding gets its own segment). Returns `(segment_ids, position_ids)`.
pub fn packed_row(lengths: &[usize], total: usize) -> (Vec<u32>, Vec<u32>) {
    let mut seg = Vec::with_capacity(total);
    let mut pos = Vec::with_capacity(total);
    for (i, &len) in lengths.iter().enumerate() {
        for p in 0..len {
            if seg.len() < total {
                seg.push(i as u32);
                pos.push(p as u32);
            }
        }
    }
    let pad_seg = lengths.len() as u32;
    let mut p = 0;
    while seg.len() < total {
        seg.push(pad_seg);
        pos.push(p);
        p += 1;
    }
    (seg, pos)
}

#[derive(Debug, Clone)]
pub(crate) struct Layer {
    pub(crate) input_norm: Tensor,
    pub(crate) post_norm: Tensor,
    pub(crate) q: Linear,
    pub(crate) k: Linear,
    pub(crate) v: Linear,
    pub(crate) o: Linear,
    pub(crate) gate: Linear,
    pub(crate) up: Linear,
    pub(crate) down: Linear,
}

/// A causal LM with frozen base weights and optional LoRA adapters.
#[derive(Debug, Clone)]
pub struct CausalLm {
    pub config: ModelConfig,
    pub(crate) embed: Frozen,
    pub(crate) layers: Vec<Layer>,
    pub(crate) norm: Tensor,
    pub(crate) lm_head: Frozen,
    /// The output matrix's blocks for decoding ([`Self::quantize_for_inference`]); the logits
    /// they give are re-scored exactly on `lm_head` where it matters (see `generate::cache`).
    pub(crate) lm_head_blocks: Option<InferBlocks>,
    /// Whether `lm_head_blocks` are the file's own Q8_0 blocks, so that they hold `lm_head`'s
    /// dense values exactly (re-encoded Q4_1/Q5 blocks do not).
    pub(crate) lm_head_blocks_exact: bool,
    pub(crate) inv_freq: Tensor,
    dtype: DType,
    device: Device,
    fused: bool,
}

/// A weight's blocks for decoding ([`CausalLm::quantize_for_inference`]).
#[derive(Debug, Clone)]
pub enum InferBlocks {
    /// Q8_0 in the tiles of the AVX-512 VNNI products ([`crate::vnni`]).
    Tiles(std::sync::Arc<crate::vnni::PackedQ8>),
    /// candle's quantized matmul: its CUDA kernels, other CPUs, the k-quants.
    Candle(candle_core::quantized::QMatMul),
}

impl InferBlocks {
    /// `x W^T` for `x` `[rows, k]`.
    pub fn times(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Self::Tiles(w) => {
                let [y] = crate::vnni::tensor_products([w.as_ref()], x)?;
                Ok(y)
            }
            Self::Candle(q) => Ok(candle_core::Module::forward(q, x)?),
        }
    }

    /// [`Self::times`] as an F32 row-major vector in host memory (the tiles' own output).
    pub fn times_host(&self, x: &Tensor) -> Result<Vec<f32>> {
        match self {
            Self::Tiles(w) => crate::vnni::host_products(&[w.as_ref()], x)?
                .pop()
                .context("Q8_0 products: no output"),
            Self::Candle(_) => Ok(crate::fused::f32_vec(&self.times(x)?)?),
        }
    }

    /// The block format multiplied by, `None` for candle's float fallbacks.
    pub fn format(&self) -> Option<candle_core::quantized::GgmlDType> {
        match self {
            Self::Tiles(_) => Some(candle_core::quantized::GgmlDType::Q8_0),
            Self::Candle(candle_core::quantized::QMatMul::QTensor(t)) => Some(t.dtype()),
            Self::Candle(_) => None,
        }
    }
}

/// The blocks inference multiplies by: `None` for float-stored weights (the f32 copy is as good).
/// On the CPU, Q4_1, Q5_0 and Q5_1 are re-encoded as Q8_0: candle has SIMD dot products for Q4_0,
/// Q8_0 and the k-quants but multiplies those three with scalar code (its CUDA kernels cover
/// them all). Q8_0's step is 1/127 of a block's largest weight, a sixteenth of Q4_1's and under a
/// quarter of Q5's, so the re-encoded weights stay well inside the original's error.
///
/// Where the CPU has AVX-512 VNNI, Q8_0 matrices go to [`crate::vnni`]'s tiles. SmolLM2 Q4_1, 2
/// threads, examples/bench_generate 64 64, decode tok/s at batch 1 and 8: candle's VNNI kernel
/// (rows zero-padded to 768 columns) 93-118 and 275-287, the tiles 143-150 and 364-384.
fn inference_blocks(qt: candle_core::quantized::QTensor) -> Result<Option<InferBlocks>> {
    use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
    let cpu = qt.device().is_cpu();
    let qt = match qt.dtype() {
        GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16 => return Ok(None),
        GgmlDType::Q4_1 | GgmlDType::Q5_0 | GgmlDType::Q5_1 if cpu => {
            QTensor::quantize(&qt.dequantize(&Device::Cpu)?, GgmlDType::Q8_0)?
        }
        _ => qt,
    };
    let (n, k) = qt.shape().dims2()?;
    if cpu && qt.dtype() == GgmlDType::Q8_0 && crate::vnni::available() && crate::vnni::fits(n, k) {
        let tiles = crate::vnni::PackedQ8::from_q8_0(&qt.data()?, n, k)?;
        return Ok(Some(InferBlocks::Tiles(std::sync::Arc::new(tiles))));
    }
    Ok(Some(InferBlocks::Candle(QMatMul::from_qtensor(qt)?)))
}

/// Mmap safetensors files into a VarBuilder.
pub fn mmap_var_builder(
    files: &[std::path::PathBuf],
    dtype: DType,
    device: &Device,
) -> Result<VarBuilder<'static>> {
    // SAFETY: the files are mapped read-only; like every mmap-based loader (candle, PyTorch's
    // safetensors) we rely on nobody truncating them while the model is alive.
    #[allow(unsafe_code)]
    let vb = unsafe { VarBuilder::from_mmaped_safetensors(files, dtype, device) }.with_context(
        || {
            format!(
                "cannot map {}",
                files
                    .first()
                    .map(|f| f.display().to_string())
                    .unwrap_or_default()
            )
        },
    )?;
    Ok(vb)
}

fn rms_norm(x: &Tensor, w: &Tensor, eps: f64, fused: bool) -> Result<Tensor> {
    if fused {
        return Ok(crate::ops::rms_norm(x, w, eps)?);
    }
    let dt = x.dtype();
    let xf = x.to_dtype(DType::F32)?;
    let var = xf.sqr()?.mean_keepdim(D::Minus1)?;
    let xn = xf.broadcast_div(&(var + eps)?.sqrt()?)?;
    Ok(xn.to_dtype(dt)?.broadcast_mul(w)?)
}

fn rotate_half(x: &Tensor) -> Result<Tensor> {
    let d = x.dim(D::Minus1)?;
    let x1 = x.narrow(D::Minus1, 0, d / 2)?;
    let x2 = x.narrow(D::Minus1, d / 2, d / 2)?;
    Ok(Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?)
}

fn repeat_kv(x: Tensor, n_rep: usize) -> Result<Tensor> {
    if n_rep == 1 {
        return Ok(x);
    }
    let (b, kv, s, hd) = x.dims4()?;
    Ok(x.unsqueeze(2)?
        .expand((b, kv, n_rep, s, hd))?
        .reshape((b, kv * n_rep, s, hd))?)
}

/// Size and formats of a model's frozen matrices ([`CausalLm::frozen_matrices`]).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FrozenMatrices {
    pub bytes: u64,
    /// What they would take in f32.
    pub f32_bytes: u64,
    /// Their formats (`f32`, `q4_0`, `nf4`...), sorted.
    pub formats: Vec<String>,
}

/// How [`CausalLm::load_with`] holds the frozen matrices.
#[derive(Default)]
pub struct LoadOptions<'a> {
    /// Keep the linear layers, the embedding and the output matrix in blocks (QLoRA; F32 on
    /// the CPU); `None` = plain tensors of the VarBuilder's dtype.
    pub quantize: Option<BaseQuant>,
    /// The GGUF file the weights come from: [`BaseQuant::Keep`] takes its blocks as stored.
    pub gguf: Option<&'a GgufFile>,
}

impl CausalLm {
    /// Load base weights (frozen) from a VarBuilder over HF-named tensors.
    pub fn load(config: &ModelConfig, vb: VarBuilder) -> Result<Self> {
        Self::load_with(config, vb, &LoadOptions::default())
    }

    /// [`Self::load`], the matrices held as `opts` says. Quantized, each matrix is read in f32,
    /// quantized and dropped before the next is read: loading never holds the model in f32.
    pub fn load_with(config: &ModelConfig, vb: VarBuilder, opts: &LoadOptions) -> Result<Self> {
        let c = config;
        let h = c.hidden_size;
        let hd = c.head_dim;
        let (nq, nkv) = (c.num_attention_heads * hd, c.num_key_value_heads * hd);
        let i = c.intermediate_size;
        if opts.quantize.is_some() && !(vb.device().is_cpu() && vb.dtype() == DType::F32) {
            bail!(
                "quantized base weights (QLoRA) train in f32 on the CPU; got {:?} on {:?}",
                vb.dtype(),
                vb.device().location()
            );
        }
        let mut gguf_reader = match (opts.quantize, opts.gguf) {
            (Some(BaseQuant::Keep), Some(file)) => Some((file, file.reader()?)),
            (Some(BaseQuant::Keep), None) => {
                bail!(
                    "--quantize keep keeps a GGUF base's own blocks: the model is not a GGUF file"
                )
            }
            _ => None,
        };
        let get = |shape: (usize, usize), name: &str| -> Result<Tensor> {
            vb.get(shape, name)
                .with_context(|| format!("weight {name}"))
        };
        let get1 = |n: usize, name: &str| -> Result<Tensor> {
            vb.get(n, name).with_context(|| format!("weight {name}"))
        };
        let mut matrix = |shape: (usize, usize), name: &str, embedding: bool| -> Result<Frozen> {
            let Some(q) = opts.quantize else {
                return Ok(Frozen::Dense(get(shape, name)?));
            };
            let format = if embedding {
                q.embedding_format(shape.1)
            } else {
                q.linear_format(shape.1)
            };
            let m = match (format, gguf_reader.as_mut()) {
                (Some(f), _) => QuantMatrix::quantize(&get(shape, name)?, f),
                (None, Some((file, reader))) => file
                    .read_hf(reader, name, c, &Device::Cpu)
                    .and_then(|qt| QuantMatrix::from_qtensor(&qt)),
                (None, None) => bail!("no GGUF blocks to keep for {name}"),
            }
            .with_context(|| format!("weight {name}"))?;
            if m.dims() != shape {
                bail!("weight {name} has shape {:?}, expected {shape:?}", m.dims());
            }
            Ok(Frozen::Quant(std::sync::Arc::new(m)))
        };
        let embed = matrix((c.vocab_size, h), "model.embed_tokens.weight", true)?;
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for l in 0..c.num_hidden_layers {
            let p = format!("model.layers.{l}");
            let mut lin = |m: &str, out: usize, inp: usize, bias: bool| -> Result<Linear> {
                let name = format!("{p}.{m}");
                let w = matrix((out, inp), &format!("{name}.weight"), false)?;
                let b = if bias {
                    Some(get1(out, &format!("{name}.bias"))?)
                } else {
                    None
                };
                Ok(Linear::new(&name, w, b))
            };
            let ab = c.attention_bias;
            layers.push(Layer {
                input_norm: get1(h, &format!("{p}.input_layernorm.weight"))?,
                post_norm: get1(h, &format!("{p}.post_attention_layernorm.weight"))?,
                q: lin("self_attn.q_proj", nq, h, ab)?,
                k: lin("self_attn.k_proj", nkv, h, ab)?,
                v: lin("self_attn.v_proj", nkv, h, ab)?,
                o: lin("self_attn.o_proj", h, nq, false)?,
                gate: lin("mlp.gate_proj", i, h, false)?,
                up: lin("mlp.up_proj", i, h, false)?,
                down: lin("mlp.down_proj", h, i, false)?,
            });
        }
        let norm = get1(h, "model.norm.weight")?;
        let lm_head = if !c.tie_word_embeddings || vb.contains_tensor("lm_head.weight") {
            matrix((c.vocab_size, h), "lm_head.weight", true)?
        } else {
            embed.clone()
        };
        let inv = c.rope_inv_freq();
        let n = inv.len();
        let inv_freq = Tensor::from_vec(inv, (1, n), vb.device())?;
        Ok(Self {
            config: config.clone(),
            embed,
            layers,
            norm,
            lm_head,
            lm_head_blocks: None,
            lm_head_blocks_exact: false,
            inv_freq,
            dtype: vb.dtype(),
            device: vb.device().clone(),
            fused: true,
        })
    }

    /// Load from resolved files: safetensors (mmap) or a GGUF file (dequantized into `dtype`).
    pub fn from_files(files: &crate::ModelFiles, dtype: DType, device: &Device) -> Result<Self> {
        Self::from_files_with(files, dtype, device, None)
    }

    /// [`Self::from_files`], the frozen matrices quantized as `quantize` says (QLoRA).
    pub fn from_files_with(
        files: &crate::ModelFiles,
        dtype: DType,
        device: &Device,
        quantize: Option<BaseQuant>,
    ) -> Result<Self> {
        let origin = files.gguf.as_ref().map(|p| p.display().to_string());
        // Mapped safetensors keep every page they were read through resident while mapped: a
        // quantizing load reads tensors one at a time instead, as GGUF loads always do.
        let (cfg, vb, gguf) = if files.gguf.is_some() || quantize.is_some() {
            let tensors = crate::tensors::ModelTensors::open(files)?;
            let gguf = tensors.gguf();
            let cfg = match &gguf {
                Some(g) => g.1.clone(),
                None => ModelConfig::from_file(&files.config)?,
            };
            (cfg, tensors.into_var_builder(dtype, device), gguf)
        } else {
            let cfg = ModelConfig::from_file(&files.config)?;
            (cfg, mmap_var_builder(&files.weights, dtype, device)?, None)
        };
        let opts = LoadOptions {
            quantize,
            gguf: gguf.as_deref().map(|g| &g.0),
        };
        Self::load_with(&cfg, vb, &opts).with_context(|| origin.unwrap_or_default())
    }

    /// Load a `.gguf` file (llama, qwen2), its weights dequantized by candle into `dtype`.
    pub fn from_gguf(path: &std::path::Path, dtype: DType, device: &Device) -> Result<Self> {
        let files = crate::source::gguf_files(path);
        Self::from_files(&files, dtype, device)
    }

    /// The frozen matrices (linear layers, embedding, output matrix when untied): what QLoRA
    /// shrinks.
    pub fn frozen_matrices(&self) -> FrozenMatrices {
        let mut all: Vec<&Frozen> = self.linears().map(|l| &l.weight).collect();
        all.push(&self.embed);
        if !self.lm_head.is(&self.embed) {
            all.push(&self.lm_head);
        }
        let mut formats: Vec<String> = all.iter().map(|f| f.format()).collect();
        formats.sort();
        formats.dedup();
        FrozenMatrices {
            bytes: all.iter().map(|f| f.bytes() as u64).sum(),
            f32_bytes: all
                .iter()
                .map(|f| f.dims2().map_or(0, |(r, c)| (r * c * 4) as u64))
                .sum(),
            formats,
        }
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Gives every linear layer whose weight is among `blocks` (HF names, rows in HF order, as
    /// [`crate::gguf::GgufFile::qtensors`] returns them) in a block format its quantized matmul for
    /// inference ([`crate::generate`]), and the output matrix its blocks (the embedding's when
    /// tied) while it keeps its dense weight; float-stored weights are left alone. Training is
    /// unchanged: it never reads them. Returns the number of linear layers that got blocks.
    ///
    /// Decoding on the output blocks alone (activations rounded to 8 bits too) was fast but
    /// not exact enough: SmolLM2 no longer answered "What is the capital of France?" with
    /// Paris. So the logits they give are a first pass, and the leading ones are computed again
    /// on the dense weight (`generate::cache`; its rows read from the tiles where those are the
    /// file's own Q8_0 blocks, which hold it exactly). (That question's first token is a near tie even
    /// on f32 weights, 0.08 logits; activations rounded per 32 values can still flip it.)
    pub fn quantize_for_inference(
        &mut self,
        blocks: Vec<(String, candle_core::quantized::QTensor)>,
    ) -> Result<usize> {
        use candle_core::quantized::QTensor;
        let mut by_name: std::collections::HashMap<String, _> = blocks.into_iter().collect();
        let checked = |name: &str, qt: QTensor, dims: (usize, usize)| -> Result<_> {
            if qt.shape().dims2()? != dims {
                bail!(
                    "{name}: quantized weight {:?} but the model's is {dims:?}",
                    qt.shape().dims(),
                );
            }
            inference_blocks(qt).with_context(|| name.to_string())
        };
        let mut n = 0;
        for lin in self.linears_mut() {
            let Some(qt) = by_name.remove(&format!("{}.weight", lin.name)) else {
                continue;
            };
            lin.quantized = checked(&lin.name, qt, lin.weight.dims2()?)?;
            n += usize::from(lin.quantized.is_some());
        }
        let head = match by_name.remove("lm_head.weight") {
            Some(qt) => Some(qt),
            None if self.lm_head.is(&self.embed) => by_name.remove("model.embed_tokens.weight"),
            None => None,
        };
        if let (Some(qt), Some(dense)) = (head, self.lm_head.dense()) {
            self.lm_head_blocks_exact = qt.dtype() == candle_core::quantized::GgmlDType::Q8_0;
            self.lm_head_blocks = checked("lm_head", qt, dense.dims2()?)?;
        }
        Ok(n)
    }

    /// Whether decoding reads the output matrix's blocks first ([`Self::quantize_for_inference`]).
    pub fn has_output_blocks(&self) -> bool {
        self.lm_head_blocks.is_some()
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    fn linears_mut(&mut self) -> impl Iterator<Item = &mut Linear> {
        self.layers.iter_mut().flat_map(|l| {
            [
                &mut l.q,
                &mut l.k,
                &mut l.v,
                &mut l.o,
                &mut l.gate,
                &mut l.up,
                &mut l.down,
            ]
        })
    }

    /// All linear layers, in layer order then q,k,v,o,gate,up,down.
    pub fn linears(&self) -> impl Iterator<Item = &Linear> {
        self.layers
            .iter()
            .flat_map(|l| [&l.q, &l.k, &l.v, &l.o, &l.gate, &l.up, &l.down])
    }

    /// Attach LoRA adapters to every linear whose module name is in `cfg.targets`; A and B
    /// are created in `varmap` under their PEFT keys. Returns the number of adapted layers.
    pub fn attach_lora(&mut self, cfg: &LoraConfig, varmap: &VarMap) -> Result<usize> {
        if cfg.rank == 0 {
            bail!("LoRA rank must be at least 1");
        }
        let mut n = 0;
        for lin in self.linears_mut() {
            if cfg.targets.iter().any(|t| t == lin.module()) {
                lin.attach_lora(cfg, varmap)?;
                n += 1;
            }
        }
        if n == 0 {
            bail!("no layer matches the LoRA targets {:?}", cfg.targets);
        }
        Ok(n)
    }

    /// Attach a loaded PEFT adapter (values copied into new Vars in `varmap`, so training can
    /// continue from it). Every adapter module must exist in the model.
    pub fn attach_adapter(
        &mut self,
        adapter: &crate::peft::Adapter,
        varmap: &VarMap,
    ) -> Result<usize> {
        let scale = adapter.config.scale();
        let dropout = adapter.config.lora_dropout as f32;
        let modules = adapter.modules();
        let mut n = 0;
        for lin in self.linears_mut() {
            if let Some((a, b)) = adapter.pair(&lin.name) {
                lin.attach_lora_from(a, b, scale, dropout, varmap)?;
                n += 1;
            }
        }
        if n != modules.len() {
            let known: Vec<String> = self.linears().map(|l| l.name.clone()).collect();
            let unknown: Vec<&String> = modules.iter().filter(|m| !known.contains(m)).collect();
            bail!("adapter modules not in the model: {unknown:?}");
        }
        Ok(n)
    }

    /// LoRA tensors as `(peft_key, var)`, sorted by key.
    pub fn lora_params(&self) -> Vec<(String, Var)> {
        let mut out = Vec::new();
        for lin in self.linears() {
            if let Some(l) = &lin.lora {
                let p = lin.peft_prefix();
                out.push((format!("{p}.lora_A.weight"), l.a.clone()));
                out.push((format!("{p}.lora_B.weight"), l.b.clone()));
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Use the frozen-linear custom op (default) or candle's plain matmul for base weights.
    pub fn set_frozen_op(&mut self, on: bool) {
        for lin in self.linears_mut() {
            lin.use_frozen_op = on;
        }
    }

    /// Run each LoRA layer as one fused CPU op (default; see `lora_linear`) or as composed
    /// candle ops.
    pub fn set_fused_lora(&mut self, on: bool) {
        for lin in self.linears_mut() {
            lin.use_fused_op = on;
        }
    }

    /// Use fused softmax/RMSNorm/rope kernels with closed-form backward ([`crate::ops`], default)
    /// or the basic-op formulation differentiated by autograd.
    pub fn set_fused_ops(&mut self, on: bool) {
        self.fused = on;
    }

    /// Embedding lookup.
    pub fn embed(&self, input_ids: &Tensor) -> Result<Tensor> {
        let (b, s) = input_ids.dims2()?;
        Ok(self
            .embed
            .embedding(input_ids)?
            .reshape((b, s, self.config.hidden_size))?)
    }

    /// Half rope tables `[s, hd/2]` (or `[b, s, hd/2]` with position ids), in the model dtype.
    fn rope_tables(&self, b: usize, s: usize, opts: &ForwardOpts) -> Result<(Tensor, Tensor)> {
        let pos = match &opts.position_ids {
            Some(p) => p.to_dtype(DType::F32)?.reshape((b, s, 1))?,
            None => Tensor::arange(0u32, s as u32, &self.device)?
                .to_dtype(DType::F32)?
                .reshape((s, 1))?,
        };
        let freqs = pos.broadcast_mul(&self.inv_freq)?;
        let cos = freqs.cos()?.to_dtype(self.dtype)?.contiguous()?;
        let sin = freqs.sin()?.to_dtype(self.dtype)?.contiguous()?;
        Ok((cos, sin))
    }

    fn apply_rope(&self, x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        if self.fused {
            return Ok(crate::ops::rope(x, cos, sin)?);
        }
        // [.., s, hd/2] -> [b|1, 1, s, hd]
        let full = |t: &Tensor| -> Result<Tensor> {
            let t = Tensor::cat(&[t, t], D::Minus1)?;
            Ok(match t.rank() {
                2 => t.unsqueeze(0)?.unsqueeze(0)?,
                _ => t.unsqueeze(1)?,
            })
        };
        Ok((x.broadcast_mul(&full(cos)?)? + rotate_half(x)?.broadcast_mul(&full(sin)?)?)?)
    }

    fn mask(&self, b: usize, s: usize, opts: &ForwardOpts) -> Result<Tensor> {
        let causal: Vec<u8> = (0..s)
            .flat_map(|i| (0..s).map(move |j| u8::from(j <= i)))
            .collect();
        let causal = Tensor::from_vec(causal, (1, s, s), &self.device)?;
        let allowed = match &opts.segment_ids {
            None => causal,
            Some(seg) => {
                let seg = seg.reshape((b, s))?;
                let same = seg.unsqueeze(2)?.broadcast_eq(&seg.unsqueeze(1)?)?;
                same.broadcast_mul(&causal)?
            }
        };
        let zero = Tensor::zeros((), self.dtype, &self.device)?.broadcast_as(allowed.shape())?;
        let ninf = Tensor::new(f32::NEG_INFINITY, &self.device)?
            .to_dtype(self.dtype)?
            .broadcast_as(allowed.shape())?;
        Ok(allowed.where_cond(&zero, &ninf)?.unsqueeze(1)?)
    }

    /// Attention from candle ops (any device and dtype), differentiated by autograd; the CPU
    /// F32 path uses the fused [`attention`] op instead.
    fn composed_attention(
        &self,
        [q, k, v]: [Tensor; 3],
        (cos, sin): (&Tensor, &Tensor),
        mask: Option<&Tensor>,
        scale: f64,
    ) -> Result<Tensor> {
        let c = &self.config;
        let (b, s, _) = q.dims3()?;
        let (nh, nkv, hd) = (c.num_attention_heads, c.num_key_value_heads, c.head_dim);
        let q = q.reshape((b, s, nh, hd))?.transpose(1, 2)?;
        let k = k.reshape((b, s, nkv, hd))?.transpose(1, 2)?;
        let v = v.reshape((b, s, nkv, hd))?.transpose(1, 2)?;
        let q = self.apply_rope(&q, cos, sin)?;
        let k = self.apply_rope(&k, cos, sin)?;
        let k = repeat_kv(k, nh / nkv)?.contiguous()?;
        let v = repeat_kv(v, nh / nkv)?.contiguous()?;
        let att = q.contiguous()?.matmul(&k.t()?)?;
        let Some(mask) = mask else {
            bail!("attention mask missing");
        };
        let att = (att * scale)?.broadcast_add(mask)?;
        let att = if self.fused {
            crate::ops::softmax_last_dim(&att)?
        } else {
            candle_nn::ops::softmax(&att, D::Minus1)?
        };
        Ok(att.matmul(&v)?.transpose(1, 2)?.reshape((b, s, nh * hd))?)
    }

    /// Final hidden states `[b, s, hidden]` (after the last norm).
    pub fn hidden(&self, input_ids: &Tensor, opts: &ForwardOpts) -> Result<Tensor> {
        let c = &self.config;
        let (b, s) = input_ids.dims2()?;
        let (cos, sin) = self.rope_tables(b, s, opts)?;
        let mut x = self.embed(input_ids)?;
        // Fused CPU kernels (crate::fused, crate::attention): causal masking happens in the kernel.
        let fused_cpu = self.fused && crate::fused::supported(&x);
        let mask = if fused_cpu && opts.segment_ids.is_none() {
            None
        } else {
            Some(self.mask(b, s, opts)?)
        };
        let shared = LayerInputs {
            cos,
            sin,
            mask,
            fused_cpu,
            mode: opts.mode,
        };
        if opts.checkpoint {
            let model = std::sync::Arc::new(self.clone());
            for li in 0..self.layers.len() {
                x = crate::checkpoint::layer(&model, li, &x, &shared)?;
            }
        } else {
            for li in 0..self.layers.len() {
                x = self.layer(li, &x, &shared)?;
            }
        }
        rms_norm(&x, &self.norm, c.rms_norm_eps, self.fused)
    }

    /// Decoder layer `li` on `x` `[b, s, hidden]`.
    pub(crate) fn layer(&self, li: usize, x: &Tensor, shared: &LayerInputs) -> Result<Tensor> {
        let c = &self.config;
        let l = &self.layers[li];
        let (nh, nkv, hd) = (c.num_attention_heads, c.num_key_value_heads, c.head_dim);
        let scale = 1.0 / (hd as f64).sqrt();
        let swiglu = c.hidden_act == candle_nn::Activation::Silu;
        let (cos, sin, mask) = (&shared.cos, &shared.sin, shared.mask.as_ref());
        let fused_cpu = shared.fused_cpu;
        let mode_l = ForwardMode {
            dropout_seed: shared
                .mode
                .dropout_seed
                .map(|sd| sd ^ ((li as u64 + 1) << 40)),
        };
        let hn = rms_norm(x, &l.input_norm, c.rms_norm_eps, self.fused)?;
        let q = l.q.forward(&hn, mode_l)?;
        let k = l.k.forward(&hn, mode_l)?;
        let v = l.v.forward(&hn, mode_l)?;
        let y = if fused_cpu {
            let spec = AttentionSpec {
                heads: nh,
                kv_heads: nkv,
                scale,
                cos,
                sin,
                mask,
            };
            attention(&q, &k, &v, &spec)?
        } else {
            self.composed_attention([q, k, v], (cos, sin), mask, scale)?
        };
        let y = l.o.forward(&y, mode_l)?;
        let x = (x + y)?;
        let hn = rms_norm(&x, &l.post_norm, c.rms_norm_eps, self.fused)?;
        let mlp = [&l.gate, &l.up, &l.down];
        let frozen = fused_cpu && swiglu && mlp.iter().all(|m| m.is_frozen());
        let y = if frozen && let [Some(g), Some(u), Some(d)] = mlp.map(|m| m.weight.dense()) {
            crate::mlp::frozen_swiglu_mlp(&hn, g, u, d)?
        } else if frozen {
            crate::mlp::frozen_swiglu_mlp_blocks(&hn, mlp.map(|m| &m.weight))?
        } else {
            let g = l.gate.forward(&hn, mode_l)?;
            let u = l.up.forward(&hn, mode_l)?;
            let gu = if fused_cpu && swiglu {
                crate::fused::swiglu(&g, &u)?
            } else {
                (g.apply(&c.hidden_act)? * u)?
            };
            l.down.forward(&gu, mode_l)?
        };
        Ok((x + y)?)
    }

    /// The LoRA tensors of decoder layer `li`.
    pub(crate) fn layer_lora(&self, li: usize) -> Vec<Var> {
        let l = &self.layers[li];
        [&l.q, &l.k, &l.v, &l.o, &l.gate, &l.up, &l.down]
            .iter()
            .filter_map(|m| m.lora.as_ref())
            .flat_map(|a| [a.a.clone(), a.b.clone()])
            .collect()
    }

    /// Logits `[.., vocab]` for hidden states `[.., hidden]` (any leading shape). Select the
    /// positions that carry loss first to save memory on large vocabularies.
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        self.lm_head.linear(hidden)
    }

    /// All-position logits `[b, s, vocab]`.
    pub fn forward(&self, input_ids: &Tensor, opts: &ForwardOpts) -> Result<Tensor> {
        self.logits(&self.hidden(input_ids, opts)?)
    }

    /// Arch of the loaded model.
    pub fn arch(&self) -> Arch {
        self.config.arch
    }
}
