//! Writing GGUF v3 files one tensor at a time.
//!
//! candle's `gguf_file::write` takes every tensor at once (a whole model in memory) and writes
//! version 2; an export only ever needs to hold the tensor it is writing. GGUF puts the tensor
//! directory (names, shapes, types, offsets) before the data, so [`GgufWriter::create`] takes the
//! plan — each tensor's name, dims and block type, from which its size follows — and
//! [`GgufWriter::tensor`] then takes the tensors in that order, checking each against its entry.
//! Values are encoded as llama.cpp's gguf.cpp and gguf-py read them; candle's reader and
//! llama.cpp read the files back in the tests and `scripts/check-export`.

use anyhow::{Context, Result, bail};
use candle_core::quantized::gguf_file::Value;
use candle_core::quantized::{GgmlDType, QTensor};
use std::io::Write;

const MAGIC: u32 = 0x4655_4747; // "GGUF", little-endian
const VERSION: u32 = 3;
/// `general.alignment`'s default: tensor data offsets are multiples of it.
pub const ALIGNMENT: usize = 32;

/// One entry of the tensor directory: GGUF name, dims in candle's order (`[rows, cols]`), type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorPlan {
    pub name: String,
    pub dims: Vec<usize>,
    pub dtype: GgmlDType,
}

impl TensorPlan {
    /// Bytes of the tensor's data: whole blocks of each row.
    pub fn size(&self) -> Result<usize> {
        let elems: usize = self.dims.iter().product();
        let block = self.dtype.block_size();
        let cols = self.dims.last().copied().unwrap_or(1);
        if !cols.is_multiple_of(block) {
            bail!(
                "{}: {cols} columns are not a multiple of {:?}'s block of {block}",
                self.name,
                self.dtype
            );
        }
        Ok(elems / block * self.dtype.type_size())
    }
}

fn value_type(v: &Value) -> u32 {
    match v {
        Value::U8(_) => 0,
        Value::I8(_) => 1,
        Value::U16(_) => 2,
        Value::I16(_) => 3,
        Value::U32(_) => 4,
        Value::I32(_) => 5,
        Value::F32(_) => 6,
        Value::Bool(_) => 7,
        Value::String(_) => 8,
        Value::Array(_) => 9,
        Value::U64(_) => 10,
        Value::I64(_) => 11,
        Value::F64(_) => 12,
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_value(out: &mut Vec<u8>, key: &str, v: &Value) -> Result<()> {
    match v {
        Value::U8(x) => out.push(*x),
        Value::I8(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::Bool(b) => out.push(u8::from(*b)),
        Value::String(s) => put_str(out, s),
        Value::Array(items) => {
            // An array holds one type; an empty one is written as U32, as gguf-py does.
            let ty = items.first().map_or(4, value_type);
            if items.iter().any(|i| value_type(i) != ty) {
                bail!("metadata {key}: an array mixes value types");
            }
            if ty == 9 {
                bail!("metadata {key}: nested arrays are not written");
            }
            out.extend_from_slice(&ty.to_le_bytes());
            out.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for item in items {
                put_value(out, key, item)?;
            }
        }
    }
    Ok(())
}

/// ggml's type id (`enum ggml_type`; candle keeps its own mapping crate-private).
pub fn ggml_type_id(t: GgmlDType) -> u32 {
    match t {
        GgmlDType::F32 => 0,
        GgmlDType::F16 => 1,
        GgmlDType::Q4_0 => 2,
        GgmlDType::Q4_1 => 3,
        GgmlDType::Q5_0 => 6,
        GgmlDType::Q5_1 => 7,
        GgmlDType::Q8_0 => 8,
        GgmlDType::Q8_1 => 9,
        GgmlDType::Q2K => 10,
        GgmlDType::Q3K => 11,
        GgmlDType::Q4K => 12,
        GgmlDType::Q5K => 13,
        GgmlDType::Q6K => 14,
        GgmlDType::Q8K => 15,
        GgmlDType::BF16 => 30,
    }
}

fn padding(n: usize) -> usize {
    (ALIGNMENT - n % ALIGNMENT) % ALIGNMENT
}

/// A GGUF file being written: header, metadata and directory at creation, then each planned
/// tensor in order, then [`GgufWriter::finish`].
pub struct GgufWriter<W: Write> {
    out: W,
    plan: Vec<TensorPlan>,
    next: usize,
}

impl<W: Write> GgufWriter<W> {
    /// Writes the header, `metadata` (in the given order) and the directory of `plan`.
    pub fn create(mut out: W, metadata: &[(String, Value)], plan: Vec<TensorPlan>) -> Result<Self> {
        let mut head = Vec::new();
        head.extend_from_slice(&MAGIC.to_le_bytes());
        head.extend_from_slice(&VERSION.to_le_bytes());
        head.extend_from_slice(&(plan.len() as u64).to_le_bytes());
        head.extend_from_slice(&(metadata.len() as u64).to_le_bytes());
        for (key, v) in metadata {
            put_str(&mut head, key);
            head.extend_from_slice(&value_type(v).to_le_bytes());
            put_value(&mut head, key, v)?;
        }
        let mut offset = 0usize;
        for t in &plan {
            put_str(&mut head, &t.name);
            head.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            // GGUF's `ne` lists the fastest-moving dimension first.
            for d in t.dims.iter().rev() {
                head.extend_from_slice(&(*d as u64).to_le_bytes());
            }
            head.extend_from_slice(&ggml_type_id(t.dtype).to_le_bytes());
            head.extend_from_slice(&(offset as u64).to_le_bytes());
            let size = t.size()?;
            offset += size + padding(size);
        }
        head.resize(head.len() + padding(head.len()), 0);
        out.write_all(&head)
            .context("cannot write the GGUF header")?;
        Ok(Self { out, plan, next: 0 })
    }

    /// Writes the next planned tensor's data; its shape and type must be the plan's.
    pub fn tensor(&mut self, t: &QTensor) -> Result<()> {
        let Some(p) = self.plan.get(self.next) else {
            bail!("more tensors than planned ({})", self.plan.len());
        };
        if t.shape().dims() != p.dims.as_slice() || t.dtype() != p.dtype {
            bail!(
                "{}: planned {:?} {:?}, got {:?} {:?}",
                p.name,
                p.dims,
                p.dtype,
                t.shape().dims(),
                t.dtype()
            );
        }
        let data = t.data()?;
        if data.len() != p.size()? {
            bail!("{}: {} bytes, planned {}", p.name, data.len(), p.size()?);
        }
        self.out
            .write_all(&data)
            .and_then(|()| self.out.write_all(&vec![0u8; padding(data.len())]))
            .with_context(|| format!("cannot write tensor {}", p.name))?;
        self.next += 1;
        Ok(())
    }

    /// The writer back, once every planned tensor is written.
    pub fn finish(self) -> Result<W> {
        if self.next != self.plan.len() {
            bail!(
                "{} of {} planned tensors written",
                self.next,
                self.plan.len()
            );
        }
        Ok(self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::gguf_file::Content;
    use candle_core::{Device, Tensor};

    #[test]
    fn candle_reads_back_metadata_and_tensors() -> Result<()> {
        let dev = Device::Cpu;
        let w = Tensor::arange(0f32, 64.0, &dev)?.reshape((2, 32))?;
        let b = Tensor::new(&[1f32, -2.0, 3.0], &dev)?;
        let tensors = [
            ("w.weight", QTensor::quantize(&w, GgmlDType::Q8_0)?),
            ("b.bias", QTensor::quantize(&b, GgmlDType::F32)?),
        ];
        let plan = tensors
            .iter()
            .map(|(n, t)| TensorPlan {
                name: n.to_string(),
                dims: t.shape().dims().to_vec(),
                dtype: t.dtype(),
            })
            .collect();
        let meta = vec![
            (
                "general.architecture".to_string(),
                Value::String("llama".into()),
            ),
            ("x.f".to_string(), Value::F32(0.5)),
            (
                "x.list".to_string(),
                Value::Array(vec![Value::String("a b".into()), Value::String("".into())]),
            ),
            ("x.empty".to_string(), Value::Array(vec![])),
            ("x.flag".to_string(), Value::Bool(true)),
        ];
        let mut wr = GgufWriter::create(Vec::new(), &meta, plan)?;
        for (_, t) in &tensors {
            wr.tensor(t)?;
        }
        let bytes = wr.finish()?;
        assert_eq!(&bytes[4..8], &3u32.to_le_bytes());
        let mut cur = std::io::Cursor::new(bytes);
        let content = Content::read(&mut cur)?;
        assert_eq!(content.metadata["x.f"].to_f32()?, 0.5);
        assert!(content.metadata["x.flag"].to_bool()?);
        assert_eq!(content.metadata["x.list"].to_vec()?.len(), 2);
        assert!(content.metadata["x.empty"].to_vec()?.is_empty());
        let back = content.tensor(&mut cur, "w.weight", &dev)?;
        assert_eq!(back.dtype(), GgmlDType::Q8_0);
        let diff = (back.dequantize(&dev)? - &w)?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?;
        assert!(diff < 0.3, "{diff}");
        let b2 = content.tensor(&mut cur, "b.bias", &dev)?.dequantize(&dev)?;
        assert_eq!(b2.to_vec1::<f32>()?, [1.0, -2.0, 3.0]);
        Ok(())
    }

    #[test]
    fn a_tensor_out_of_plan_is_an_error() -> Result<()> {
        let dev = Device::Cpu;
        let plan = vec![TensorPlan {
            name: "a".into(),
            dims: vec![2, 32],
            dtype: GgmlDType::F32,
        }];
        let mut wr = GgufWriter::create(Vec::new(), &[], plan)?;
        let wrong = QTensor::quantize(
            &Tensor::zeros((2, 32), candle_core::DType::F32, &dev)?,
            GgmlDType::F16,
        )?;
        assert!(wr.tensor(&wrong).is_err());
        assert!(wr.finish().is_err());
        Ok(())
    }
}
