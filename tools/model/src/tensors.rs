//! A model's weights one tensor at a time, by HF name, in F32 on the CPU: from mapped safetensors
//! or from a GGUF (dequantized, llama q/k rows back in HF order). Exports read a tensor, change
//! it, write it and drop it, so they hold one tensor beyond the mapping, never the model.

use crate::gguf::GgufFile;
use crate::source::ModelFiles;
use anyhow::{Context, Result};
use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};

pub enum ModelTensors {
    Safetensors(MmapedSafetensors),
    Gguf(GgufFile),
}

impl ModelTensors {
    pub fn open(files: &ModelFiles) -> Result<Self> {
        if let Some(path) = &files.gguf {
            return Ok(Self::Gguf(GgufFile::open(path)?));
        }
        // SAFETY: mapped read-only; as for every mmap-based loader, nobody may truncate the files
        // while they are mapped.
        #[allow(unsafe_code)]
        let st = unsafe { MmapedSafetensors::multi(&files.weights) }.with_context(|| {
            format!(
                "cannot map {}",
                files
                    .weights
                    .first()
                    .map(|f| f.display().to_string())
                    .unwrap_or_default()
            )
        })?;
        Ok(Self::Safetensors(st))
    }

    /// HF names of every tensor (for a GGUF, those our models use), sorted.
    pub fn names(&self) -> Vec<String> {
        match self {
            Self::Safetensors(st) => {
                let mut v: Vec<String> = st.tensors().into_iter().map(|(n, _)| n).collect();
                v.sort();
                v
            }
            Self::Gguf(g) => g.hf_names(),
        }
    }

    /// A tensor's dims (`[rows, cols]` for a matrix).
    pub fn dims(&self, name: &str) -> Result<Vec<usize>> {
        match self {
            Self::Safetensors(st) => Ok(st
                .get(name)
                .with_context(|| format!("no tensor {name}"))?
                .shape()
                .to_vec()),
            Self::Gguf(g) => g.tensor_dims(
                &crate::gguf::gguf_name(name).with_context(|| format!("no tensor {name}"))?,
            ),
        }
    }

    /// One tensor in F32 on the CPU (a GGUF's dequantized, rows in HF order).
    pub fn get(&self, name: &str) -> Result<Tensor> {
        let dev = Device::Cpu;
        let t = match self {
            Self::Safetensors(st) => st.load(name, &dev)?,
            Self::Gguf(g) => {
                let file = std::fs::File::open(g.path())
                    .with_context(|| format!("cannot open {}", g.path().display()))?;
                let mut reader = std::io::BufReader::new(file);
                g.read_hf(&mut reader, name, &dev)?.dequantize(&dev)?
            }
        };
        t.to_dtype(DType::F32)
            .with_context(|| format!("tensor {name}"))
    }
}
