//! GGUF tensors under our (HF) names, quantized or dequantized.
//!
//! llama.cpp's converter stores the q/k projections of `llama` models with the rows of each head
//! interleaved (`LlamaModel.permute` in convert_hf_to_gguf.py: reshape `[heads, 2, hd/2, in]`,
//! swap axes 1 and 2), for its interleaved rope; our forward uses HF's rotate-half rope, so the
//! permutation is undone at load. It only moves whole rows, and a quantized block never spans
//! rows, so it is undone on the quantized bytes: [`GgufFile::qtensors`] returns tensors already in
//! HF row order, ready for `QMatMul` in a rotate-half forward. `qwen2` files are not permuted.

use super::GgufFile;
use crate::config::Arch;
use anyhow::{Context, Result, bail};
use candle_core::quantized::{QTensor, ggml_file::qtensor_from_ggml};
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;

const LAYER_PARTS: &[(&str, &str)] = &[
    ("attn_norm", "input_layernorm"),
    ("ffn_norm", "post_attention_layernorm"),
    ("attn_q", "self_attn.q_proj"),
    ("attn_k", "self_attn.k_proj"),
    ("attn_v", "self_attn.v_proj"),
    ("attn_output", "self_attn.o_proj"),
    ("ffn_gate", "mlp.gate_proj"),
    ("ffn_up", "mlp.up_proj"),
    ("ffn_down", "mlp.down_proj"),
];

const TOP: &[(&str, &str)] = &[
    ("token_embd", "model.embed_tokens"),
    ("output_norm", "model.norm"),
    ("output", "lm_head"),
];

/// The HF name of a GGUF tensor (`blk.3.attn_q.weight` → `model.layers.3.self_attn.q_proj.weight`);
/// `None` for tensors our models do not use.
pub fn hf_name(gguf: &str) -> Option<String> {
    let (stem, suffix) = gguf.rsplit_once('.')?;
    if !matches!(suffix, "weight" | "bias") {
        return None;
    }
    if let Some((_, hf)) = TOP.iter().find(|(g, _)| *g == stem) {
        return Some(format!("{hf}.{suffix}"));
    }
    let rest = stem.strip_prefix("blk.")?;
    let (layer, part) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (_, hf) = LAYER_PARTS.iter().find(|(g, _)| *g == part)?;
    Some(format!("model.layers.{layer}.{hf}.{suffix}"))
}

/// The GGUF name of an HF tensor, the inverse of [`hf_name`].
pub fn gguf_name(hf: &str) -> Option<String> {
    let (stem, suffix) = hf.rsplit_once('.')?;
    if !matches!(suffix, "weight" | "bias") {
        return None;
    }
    if let Some((g, _)) = TOP.iter().find(|(_, h)| *h == stem) {
        return Some(format!("{g}.{suffix}"));
    }
    let rest = stem.strip_prefix("model.layers.")?;
    let (layer, part) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (g, _) = LAYER_PARTS.iter().find(|(_, h)| *h == part)?;
    Some(format!("blk.{layer}.{g}.{suffix}"))
}

/// For a llama.cpp-permuted q or k projection of `rows` rows and `heads` heads: the GGUF row that
/// holds each HF row (`hf[r] = gguf[order[r]]`). Within a head of size `hd`, HF row `i·hd/2 + j`
/// (half `i`, pair `j`) was written to row `2j + i`.
pub fn llama_qk_unpermute_rows(rows: usize, heads: usize) -> Result<Vec<usize>> {
    if heads == 0 || !rows.is_multiple_of(heads) || !(rows / heads).is_multiple_of(2) {
        bail!("cannot un-permute {rows} rows over {heads} heads (need an even head size)");
    }
    let hd = rows / heads;
    let half = hd / 2;
    Ok((0..rows)
        .map(|r| {
            let (h, within) = (r / hd, r % hd);
            let (i, j) = (within / half, within % half);
            h * hd + 2 * j + i
        })
        .collect())
}

/// Reorder the rows of a quantized tensor (`hf[r] = src[order[r]]`) by moving whole rows of
/// blocks: exact for every block format.
fn reorder_rows(qt: &QTensor, order: &[usize], device: &Device) -> Result<QTensor> {
    let dims = qt.shape().dims().to_vec();
    let rows = dims.first().copied().unwrap_or(1);
    if rows != order.len() {
        bail!("row order of {} for a tensor of {rows} rows", order.len());
    }
    let data = qt.data()?;
    if !data.len().is_multiple_of(rows) {
        bail!("a block of {:?} spans two rows", qt.dtype());
    }
    let row_bytes = data.len() / rows;
    let mut out = Vec::with_capacity(data.len());
    for &src in order {
        out.extend_from_slice(&data[src * row_bytes..(src + 1) * row_bytes]);
    }
    Ok(qtensor_from_ggml(qt.dtype(), &out, dims, device)?)
}

/// The inverse of [`llama_qk_unpermute_rows`]: the HF row that each GGUF row holds
/// (`gguf[p] = hf[order[p]]`), llama.cpp's `LlamaModel.permute` as a row order.
pub fn llama_qk_permute_rows(rows: usize, heads: usize) -> Result<Vec<usize>> {
    let unpermute = llama_qk_unpermute_rows(rows, heads)?;
    let mut order = vec![0; rows];
    for (hf, gguf) in unpermute.into_iter().enumerate() {
        order[gguf] = hf;
    }
    Ok(order)
}

/// The head count by which llama.cpp permutes the rows of HF tensor `hf` in an `arch` model
/// (q and k projections of `llama`, weights and biases, and their LoRA B), `None` for the others.
pub fn llama_qk_heads(arch: Arch, cfg: &crate::ModelConfig, hf: &str) -> Option<usize> {
    if arch != Arch::Llama {
        return None;
    }
    if hf.contains(".self_attn.q_proj.") || hf.ends_with(".self_attn.q_proj") {
        Some(cfg.num_attention_heads)
    } else if hf.contains(".self_attn.k_proj.") || hf.ends_with(".self_attn.k_proj") {
        Some(cfg.num_key_value_heads)
    } else {
        None
    }
}

/// `t`'s rows (dim 0) in `order` (`out[r] = t[order[r]]`): exact, any dtype.
pub fn reorder_tensor_rows(t: &Tensor, order: &[usize]) -> Result<Tensor> {
    let idx: Vec<u32> = order.iter().map(|&i| i as u32).collect();
    let idx = Tensor::new(idx.as_slice(), t.device())?;
    Ok(t.index_select(&idx, 0)?)
}

impl GgufFile {
    /// Every tensor our models use, quantized as stored, by HF name, on `device`; llama q/k
    /// (weights and biases) already in HF row order (see the module doc). Sorted by name.
    pub fn qtensors(&self, device: &Device) -> Result<Vec<(String, QTensor)>> {
        let mut reader = self.reader()?;
        let cfg = self.config()?;
        let mut out = Vec::new();
        for hf in self.hf_names() {
            let qt = self.read_hf(&mut reader, &hf, &cfg, device)?;
            out.push((hf, qt));
        }
        Ok(out)
    }

    /// A reader over the file for [`Self::read_hf`].
    pub fn reader(&self) -> Result<std::io::BufReader<std::fs::File>> {
        let file = std::fs::File::open(self.path())
            .with_context(|| format!("cannot open {}", self.path().display()))?;
        Ok(std::io::BufReader::new(file))
    }

    /// The HF names of the tensors our models use, sorted.
    pub fn hf_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .content()
            .tensor_infos
            .keys()
            .filter_map(|g| hf_name(g))
            .collect();
        names.sort();
        names
    }

    /// One tensor by HF name, quantized as stored, rows in HF order; `cfg` is [`GgufFile::config`].
    pub fn read_hf(
        &self,
        reader: &mut std::io::BufReader<std::fs::File>,
        hf: &str,
        cfg: &crate::ModelConfig,
        device: &Device,
    ) -> Result<QTensor> {
        let g = gguf_name(hf).with_context(|| format!("{hf} has no GGUF name"))?;
        match llama_qk_heads(cfg.arch, cfg, hf) {
            Some(heads) => {
                let qt = self.read_tensor(reader, &g, &Device::Cpu)?;
                let rows = qt.shape().dims().first().copied().unwrap_or(0);
                let order = llama_qk_unpermute_rows(rows, heads)
                    .with_context(|| format!("{}: tensor {g}", self.origin()))?;
                reorder_rows(&qt, &order, device)
                    .with_context(|| format!("{}: tensor {g}", self.origin()))
            }
            None => self.read_tensor(reader, &g, device),
        }
    }

    fn read_tensor(
        &self,
        reader: &mut std::io::BufReader<std::fs::File>,
        gguf_name: &str,
        device: &Device,
    ) -> Result<QTensor> {
        self.content()
            .tensor(reader, gguf_name, device)
            .with_context(|| format!("{}: cannot read tensor {gguf_name}", self.origin()))
    }

    /// Every tensor our models use, dequantized by candle into `dtype` on `device`, by HF name.
    pub fn tensors(&self, dtype: DType, device: &Device) -> Result<HashMap<String, Tensor>> {
        self.qtensors(&Device::Cpu)?
            .into_iter()
            .map(|(name, qt)| {
                let t = qt
                    .dequantize(&Device::Cpu)
                    .and_then(|t| t.to_dtype(dtype))
                    .and_then(|t| t.to_device(device))
                    .with_context(|| format!("{}: cannot dequantize {name}", self.origin()))?;
                Ok((name, t))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_both_ways() {
        for (g, h) in [
            ("token_embd.weight", "model.embed_tokens.weight"),
            ("output_norm.weight", "model.norm.weight"),
            ("output.weight", "lm_head.weight"),
            (
                "blk.0.attn_norm.weight",
                "model.layers.0.input_layernorm.weight",
            ),
            (
                "blk.29.ffn_norm.weight",
                "model.layers.29.post_attention_layernorm.weight",
            ),
            ("blk.3.attn_q.bias", "model.layers.3.self_attn.q_proj.bias"),
            (
                "blk.3.attn_output.weight",
                "model.layers.3.self_attn.o_proj.weight",
            ),
            (
                "blk.12.ffn_down.weight",
                "model.layers.12.mlp.down_proj.weight",
            ),
        ] {
            assert_eq!(hf_name(g).as_deref(), Some(h));
            assert_eq!(gguf_name(h).as_deref(), Some(g));
        }
        for unused in [
            "rope_freqs.weight",
            "blk.x.attn_q.weight",
            "blk.0.attn_q.scale",
        ] {
            assert_eq!(hf_name(unused), None, "{unused}");
        }
    }

    #[test]
    fn unpermute_order_is_a_permutation_within_heads() -> Result<()> {
        // Head size 4: HF rows (0,1 | 2,3) were stored as (0,2,1,3), per head.
        assert_eq!(llama_qk_unpermute_rows(8, 2)?, [0, 2, 1, 3, 4, 6, 5, 7]);
        assert!(llama_qk_unpermute_rows(6, 2).is_err());
        Ok(())
    }
}
