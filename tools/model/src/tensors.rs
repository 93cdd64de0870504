//! A model's weights one tensor at a time, by HF name, in F32 on the CPU: from safetensors files
//! or from a GGUF (dequantized, llama q/k rows back in HF order). Exports read a tensor, change
//! it, write it and drop it, so they hold one tensor, never the model.
//!
//! Safetensors are mapped only to parse their headers; tensor data is read with `pread`, so the
//! pages of tensors already written do not stay in the process's memory as a mapping's would
//! (Qwen2.5-0.5B-shaped f32 → GGUF f16: 1.9 GB peak RSS through the mapping).

use crate::gguf::GgufFile;
use crate::source::ModelFiles;
use anyhow::{Context, Result, anyhow, bail};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use std::collections::HashMap;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// One safetensors file: its header (tensor name → type, shape, byte range) and the open file.
struct StFile {
    path: PathBuf,
    file: std::fs::File,
    /// Start of the data section (8-byte length + header).
    data_start: u64,
    infos: HashMap<String, safetensors::tensor::TensorInfo>,
}

impl StFile {
    fn open(path: &Path) -> Result<Self> {
        let file =
            std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        // SAFETY: mapped read-only to parse the header; nobody may truncate the file meanwhile.
        #[allow(unsafe_code)]
        let map = unsafe { memmap2::Mmap::map(&file) }
            .with_context(|| format!("cannot map {}", path.display()))?;
        let (n, meta) = safetensors::SafeTensors::read_metadata(&map)
            .map_err(|e| anyhow!("{}: not a safetensors file: {e}", path.display()))?;
        let infos = meta
            .tensors()
            .into_iter()
            .map(|(name, info)| (name, info.clone()))
            .collect();
        Ok(Self {
            path: path.to_path_buf(),
            file,
            data_start: 8 + n as u64,
            infos,
        })
    }

    fn load(&self, name: &str) -> Result<Tensor> {
        let info = &self.infos[name];
        let dtype = match info.dtype {
            safetensors::Dtype::F32 => DType::F32,
            safetensors::Dtype::F16 => DType::F16,
            safetensors::Dtype::BF16 => DType::BF16,
            safetensors::Dtype::F64 => DType::F64,
            other => bail!(
                "{}: {name} is {other:?}, not a float type",
                self.path.display()
            ),
        };
        let (start, end) = info.data_offsets;
        let mut bytes = vec![0u8; end - start];
        self.file
            .read_exact_at(&mut bytes, self.data_start + start as u64)
            .with_context(|| format!("{}: cannot read {name}", self.path.display()))?;
        Ok(Tensor::from_raw_buffer(
            &bytes,
            dtype,
            &info.shape,
            &Device::Cpu,
        )?)
    }
}

enum Source {
    Safetensors(Vec<StFile>),
    /// The file and its hyper-parameters (read once: every tensor needs the head counts).
    Gguf(std::sync::Arc<(GgufFile, crate::ModelConfig)>),
}

pub struct ModelTensors(Source);

impl ModelTensors {
    pub fn open(files: &ModelFiles) -> Result<Self> {
        if let Some(path) = &files.gguf {
            let file = GgufFile::open(path)?;
            let cfg = file.config()?;
            return Ok(Self(Source::Gguf(std::sync::Arc::new((file, cfg)))));
        }
        let st = files
            .weights
            .iter()
            .map(|p| StFile::open(p))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self(Source::Safetensors(st)))
    }

    /// The GGUF file and its hyper-parameters, `None` for safetensors.
    pub fn gguf(&self) -> Option<std::sync::Arc<(GgufFile, crate::ModelConfig)>> {
        match &self.0 {
            Source::Gguf(g) => Some(g.clone()),
            Source::Safetensors(_) => None,
        }
    }

    /// HF names of every tensor (for a GGUF, those our models use), sorted.
    pub fn names(&self) -> Vec<String> {
        match &self.0 {
            Source::Safetensors(st) => {
                let mut v: Vec<String> = st.iter().flat_map(|f| f.infos.keys().cloned()).collect();
                v.sort();
                v
            }
            Source::Gguf(g) => g.0.hf_names(),
        }
    }

    /// A tensor's dims (`[rows, cols]` for a matrix).
    pub fn dims(&self, name: &str) -> Result<Vec<usize>> {
        match &self.0 {
            Source::Safetensors(_) => Ok(self.st_file(name)?.infos[name].shape.clone()),
            Source::Gguf(g) => g.0.tensor_dims(
                &crate::gguf::gguf_name(name).with_context(|| format!("no tensor {name}"))?,
            ),
        }
    }

    fn st_file(&self, name: &str) -> Result<&StFile> {
        match &self.0 {
            Source::Safetensors(st) => st
                .iter()
                .find(|f| f.infos.contains_key(name))
                .with_context(|| format!("no tensor {name}")),
            Source::Gguf(_) => bail!("not a safetensors model"),
        }
    }

    /// One tensor in F32 on the CPU (a GGUF's dequantized, rows in HF order).
    pub fn get(&self, name: &str) -> Result<Tensor> {
        let dev = Device::Cpu;
        let t = match &self.0 {
            Source::Safetensors(_) => self.st_file(name)?.load(name)?,
            Source::Gguf(gc) => {
                let (g, cfg) = &**gc;
                g.read_hf(&mut g.reader()?, name, cfg, &dev)?
                    .dequantize(&dev)?
            }
        };
        t.to_dtype(DType::F32)
            .with_context(|| format!("tensor {name}"))
    }

    /// A VarBuilder that reads each tensor when the model asks for it, converted to `dtype`: a
    /// load then holds the model and one tensor, not the file (a GGUF dequantized in full, or
    /// a mapping whose pages stay resident while it lives).
    pub fn into_var_builder(self, dtype: DType, device: &Device) -> VarBuilder<'static> {
        VarBuilder::from_backend(Box::new(self), dtype, device.clone())
    }
}

impl candle_nn::var_builder::SimpleBackend for ModelTensors {
    fn get(
        &self,
        s: candle_core::Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let t = self.get_unchecked(name, dtype, dev)?;
        if t.shape() != &s {
            candle_core::bail!("{name} has shape {:?}, expected {:?}", t.dims(), s.dims());
        }
        Ok(t)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.get(name)
            .map_err(|e| candle_core::Error::Msg(format!("{e:#}")))?
            .to_dtype(dtype)?
            .to_device(dev)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.dims(name).is_ok()
    }
}
