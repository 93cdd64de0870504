//! GGUF models (llama.cpp, Ollama, LM Studio): hyper-parameters, weights, tokenizer and chat
//! template from one file, for the `llama` and `qwen2` architectures.
//!
//! Parsing and every block format are candle's (`candle_core::quantized::gguf_file`); this module
//! maps llama.cpp's names and conventions onto ours: `<arch>.*` keys → [`ModelConfig`]
//! ([`GgufFile::config`]), tensor names → HF names with llama.cpp's q/k row permutation undone
//! ([`weights`]), `tokenizer.ggml.*` → a `tokenizers::Tokenizer` ([`tokenizer`]).

// Tests only: tiny safetensors models converted to GGUF as llama.cpp's converter does.
#[cfg(any(test, feature = "fixtures"))]
pub mod fixtures;
pub mod metadata;
pub mod tokenizer;
pub mod weights;
pub mod write;

use crate::config::{Arch, ModelConfig};
use anyhow::{Context, Result, bail};
use candle_core::quantized::gguf_file::{Content, Value};
use candle_nn::Activation;
use std::path::{Path, PathBuf};

pub use weights::{
    gguf_name, hf_name, llama_qk_heads, llama_qk_permute_rows, llama_qk_unpermute_rows,
    reorder_tensor_rows,
};

/// Whether a path names a GGUF file (by its extension, as llama.cpp and Ollama name them).
pub fn is_gguf(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
}

/// An opened GGUF file: its metadata and tensor directory (tensor data is read on demand).
#[derive(Debug)]
pub struct GgufFile {
    path: PathBuf,
    content: Content,
}

impl GgufFile {
    /// Read the header, metadata and tensor directory.
    pub fn open(path: &Path) -> Result<Self> {
        let file =
            std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        let mut reader = std::io::BufReader::new(file);
        let content = Content::read(&mut reader)
            .with_context(|| format!("{}: not a readable GGUF file", path.display()))?;
        Ok(Self {
            path: path.to_path_buf(),
            content,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// candle's parsed header (metadata and tensor infos, by GGUF name).
    pub fn content(&self) -> &Content {
        &self.content
    }

    pub(crate) fn origin(&self) -> String {
        self.path.display().to_string()
    }

    /// A metadata value, `None` when the key is absent.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.content.metadata.get(key)
    }

    pub(crate) fn string(&self, key: &str) -> Result<Option<&str>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(v) => bail!("{}: {key} is not a string: {v:?}", self.origin()),
        }
    }

    pub(crate) fn uint(&self, key: &str) -> Result<Option<usize>> {
        self.get(key)
            .map(|v| as_uint(v).with_context(|| format!("{}: {key}", self.origin())))
            .transpose()
    }

    fn float(&self, key: &str) -> Result<Option<f64>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::F32(x)) => Ok(Some(*x as f64)),
            Some(Value::F64(x)) => Ok(Some(*x)),
            Some(v) => bail!("{}: {key} is not a float: {v:?}", self.origin()),
        }
    }

    pub(crate) fn boolean(&self, key: &str) -> Result<Option<bool>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(v) => bail!("{}: {key} is not a bool: {v:?}", self.origin()),
        }
    }

    /// `general.architecture` as one of ours.
    pub fn arch(&self) -> Result<Arch> {
        let name = self
            .string("general.architecture")?
            .with_context(|| format!("{}: missing general.architecture", self.origin()))?;
        match name {
            "llama" => Ok(Arch::Llama),
            "qwen2" => Ok(Arch::Qwen2),
            other => bail!(
                "{}: unsupported GGUF architecture {other:?} (supported: llama, qwen2)",
                self.origin()
            ),
        }
    }

    fn arch_name(&self) -> Result<&'static str> {
        Ok(self.arch()?.model_type())
    }

    /// The model's hyper-parameters from the `<arch>.*` keys. The vocabulary size is the row
    /// count of `token_embd.weight` (what the weights need; the token list may be shorter);
    /// embeddings are tied when the file has no `output.weight`.
    pub fn config(&self) -> Result<ModelConfig> {
        let arch = self.arch()?;
        let a = self.arch_name()?;
        let origin = self.origin();
        let req = |k: &str| -> Result<usize> {
            let key = format!("{a}.{k}");
            self.uint(&key)?
                .with_context(|| format!("{origin}: missing metadata key {key}"))
        };
        let hidden = req("embedding_length")?;
        let layers = req("block_count")?;
        let heads = req("attention.head_count")?;
        let kv_heads = self
            .uint(&format!("{a}.attention.head_count_kv"))?
            .unwrap_or(heads);
        if heads == 0 || kv_heads == 0 || !heads.is_multiple_of(kv_heads) {
            bail!("{origin}: head_count {heads} must be a multiple of head_count_kv {kv_heads}");
        }
        let head_dim = match self.uint(&format!("{a}.attention.key_length"))? {
            Some(d) => d,
            None if hidden.is_multiple_of(heads) => hidden / heads,
            None => bail!("{origin}: embedding_length {hidden} is not a multiple of head_count"),
        };
        let eps_key = format!("{a}.attention.layer_norm_rms_epsilon");
        let eps = self
            .float(&eps_key)?
            .with_context(|| format!("{origin}: missing metadata key {eps_key}"))?;
        if self.content.tensor_infos.contains_key("rope_freqs.weight")
            || self.get(&format!("{a}.rope.scaling.type")).is_some()
        {
            bail!(
                "{origin}: rope scaling (rope_freqs.weight / rope.scaling.*) is not supported yet"
            );
        }
        let embd = self.tensor_dims("token_embd.weight")?;
        let vocab = match embd.as_slice() {
            [v, h] if *h == hidden => *v,
            d => bail!("{origin}: token_embd.weight has shape {d:?}, expected [vocab, {hidden}]"),
        };
        let context = self.uint(&format!("{a}.context_length"))?.unwrap_or(4096);
        let bos = self.uint("tokenizer.ggml.bos_token_id")?.map(|i| i as u32);
        let mut eos = vec![];
        for k in ["tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id"] {
            if let Some(id) = self.uint(k)?
                && !eos.contains(&(id as u32))
            {
                eos.push(id as u32);
            }
        }
        let has = |n: &str| self.content.tensor_infos.contains_key(n);
        Ok(ModelConfig {
            arch,
            vocab_size: vocab,
            hidden_size: hidden,
            intermediate_size: req("feed_forward_length")?,
            num_hidden_layers: layers,
            num_attention_heads: heads,
            num_key_value_heads: kv_heads,
            head_dim,
            rms_norm_eps: eps,
            rope_theta: self
                .float(&format!("{a}.rope.freq_base"))?
                .unwrap_or(10_000.0),
            max_position_embeddings: context,
            tie_word_embeddings: !has("output.weight"),
            hidden_act: Activation::Silu,
            attention_bias: match arch {
                Arch::Qwen2 => true,
                Arch::Llama => has("blk.0.attn_q.bias"),
            },
            rope_scaling: None,
            bos_token_id: bos,
            eos_token_ids: eos,
            sliding_window: context,
            max_window_layers: layers,
            use_sliding_window: false,
        })
    }

    /// A tensor's dims in candle's order (`[rows, cols]`, the reverse of GGUF's `ne`).
    pub fn tensor_dims(&self, gguf_name: &str) -> Result<Vec<usize>> {
        Ok(self
            .content
            .tensor_infos
            .get(gguf_name)
            .with_context(|| format!("{}: no tensor {gguf_name}", self.origin()))?
            .shape
            .dims()
            .to_vec())
    }
}

fn as_uint(v: &Value) -> Result<usize> {
    let n: i128 = match v {
        Value::U8(x) => *x as i128,
        Value::I8(x) => *x as i128,
        Value::U16(x) => *x as i128,
        Value::I16(x) => *x as i128,
        Value::U32(x) => *x as i128,
        Value::I32(x) => *x as i128,
        Value::U64(x) => *x as i128,
        Value::I64(x) => *x as i128,
        v => bail!("not an integer: {v:?}"),
    };
    usize::try_from(n).map_err(|_| anyhow::anyhow!("{n} is not a valid size or id"))
}
