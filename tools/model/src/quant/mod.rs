//! Frozen base weights kept quantized (QLoRA): a matrix stored in a block format, multiplied by
//! dequantizing a few tiles of rows at a time, so no large weight ever exists in f32.
//!
//! Formats: candle's GGUF blocks (`q8_0`, `q4_0`, `q4_k`, and with `keep` whatever a GGUF file
//! stores) and NF4 ([`nf4`]). Products run on the CPU in f32 through [`crate::matmul::gemm`]: per
//! step of rows (4 MiB in f32), dequantize its tiles in parallel (a cost of `rows·cols` against
//! `m·rows·cols` for the product) and multiply. `examples/bench_quant`, a `[2048, 512]` weight
//! and 256 rows on 2 threads: `x Wᵀ` 3.8 ms in f32, 4.1-4.4 ms on any of our formats; candle's
//! `QMatMul` 1.2-1.5 ms on Q8_0 and Q4_K (repacked AVX kernels, which keep a second, repacked copy
//! of the weights and round the activations to 8 bits), 18 ms on Q4_0, 99 ms on Q5_0. Ours is
//! exact on the dequantized weights (those the backward multiplies by), holds one copy of the
//! blocks, and runs every format at the speed of f32.

pub mod nf4;

use crate::matmul::{Mat, MatMut, Threads, gemm};
use anyhow::{Result, bail};
use candle_core::quantized::{GgmlDType, QTensor, QuantizedType};
use candle_core::{CpuStorage, Device, Tensor};
use std::borrow::Cow;

/// `--quantize` of ft-train-lora: how the frozen base weights are held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BaseQuant {
    Q8_0,
    Q4_0,
    Q4K,
    Nf4 {
        double_quant: bool,
    },
    /// A GGUF base's own blocks, as stored.
    Keep,
}

impl std::str::FromStr for BaseQuant {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "q8_0" => Self::Q8_0,
            "q4_0" => Self::Q4_0,
            "q4_k" => Self::Q4K,
            "nf4" => Self::Nf4 {
                double_quant: false,
            },
            "keep" => Self::Keep,
            other => {
                bail!("unknown quantization {other:?} (expected q8_0, q4_0, q4_k, nf4 or keep)")
            }
        })
    }
}

impl BaseQuant {
    pub fn name(self) -> &'static str {
        match self {
            Self::Q8_0 => "q8_0",
            Self::Q4_0 => "q4_0",
            Self::Q4K => "q4_k",
            Self::Nf4 {
                double_quant: false,
            } => "nf4",
            Self::Nf4 { double_quant: true } => "nf4+dq",
            Self::Keep => "keep",
        }
    }

    /// The format of a linear layer's `[rows, cols]` weight (`None` for `keep`: the file's).
    pub fn linear_format(self, cols: usize) -> Option<Format> {
        match self {
            Self::Q8_0 => Some(Format::Ggml(fitting(GgmlDType::Q8_0, cols))),
            Self::Q4_0 => Some(Format::Ggml(fitting(GgmlDType::Q4_0, cols))),
            Self::Q4K => Some(Format::Ggml(fitting(GgmlDType::Q4K, cols))),
            Self::Nf4 { double_quant } if cols.is_multiple_of(nf4::BLOCK) => {
                Some(Format::Nf4 { double_quant })
            }
            Self::Nf4 { .. } => Some(Format::Ggml(fitting(GgmlDType::Q8_0, cols))),
            Self::Keep => None,
        }
    }

    /// The format of the token embedding and the output matrix: Q8_0 (its error is a sixteenth
    /// of a 4-bit format's; a 4-bit vocabulary matrix moves every logit), the file's for `keep`.
    pub fn embedding_format(self, cols: usize) -> Option<Format> {
        match self {
            Self::Keep => None,
            _ => Some(Format::Ggml(fitting(GgmlDType::Q8_0, cols))),
        }
    }
}

/// `t`, or llama-quantize's fallback when a row of `cols` weights is not a whole number of `t`'s
/// blocks (k-quants use 256-blocks: Q4_K → Q5_0, Q6_K → Q8_0), or F16 when no 32-block fits.
pub fn fitting(t: GgmlDType, cols: usize) -> GgmlDType {
    let fits = |t: GgmlDType| cols.is_multiple_of(t.block_size());
    if fits(t) {
        return t;
    }
    let fallback = match t {
        GgmlDType::Q4K => GgmlDType::Q5_0,
        GgmlDType::Q6K => GgmlDType::Q8_0,
        _ => GgmlDType::F16,
    };
    if fits(fallback) {
        fallback
    } else {
        GgmlDType::F16
    }
}

/// A GGML type's name as our reports write it (`q8_0`, `q4k`, `f16`).
pub fn type_name(t: GgmlDType) -> String {
    format!("{t:?}").to_lowercase()
}

/// A block format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Ggml(GgmlDType),
    Nf4 { double_quant: bool },
}

impl Format {
    pub fn name(self) -> String {
        match self {
            Self::Ggml(t) => type_name(t),
            Self::Nf4 {
                double_quant: false,
            } => "nf4".into(),
            Self::Nf4 { double_quant: true } => "nf4+dq".into(),
        }
    }
}

/// Weights per tile (256 KiB in f32): the unit of storage, dequantized by one thread.
const TILE_ELEMS: usize = 1 << 16;
/// Weights per product step (4 MiB in f32): as many tiles, dequantized in parallel, then
/// multiplied at once (wide enough for gemm to run at full speed).
const GROUP_ELEMS: usize = 1 << 20;

enum Tile {
    Ggml(Box<dyn QuantizedType>),
    Nf4(nf4::Nf4),
}

/// A frozen `[rows, cols]` matrix in a block format, in tiles of whole rows.
pub struct QuantMatrix {
    rows: usize,
    cols: usize,
    tile_rows: usize,
    format: Format,
    tiles: Vec<Tile>,
}

impl std::fmt::Debug for QuantMatrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "QuantMatrix[{}, {}; {}]",
            self.rows,
            self.cols,
            self.format.name()
        )
    }
}

fn tile_rows(cols: usize) -> usize {
    (TILE_ELEMS / cols.max(1)).max(1)
}

impl QuantMatrix {
    /// Quantizes a `[rows, cols]` f32 CPU tensor.
    pub fn quantize(w: &Tensor, format: Format) -> Result<Self> {
        let (rows, cols) = w.dims2()?;
        let block = match format {
            Format::Ggml(t) => t.block_size(),
            Format::Nf4 { .. } => nf4::BLOCK,
        };
        if !cols.is_multiple_of(block) {
            bail!(
                "rows of {cols} weights are not whole {} blocks",
                format.name()
            );
        }
        let w = w
            .to_device(&Device::Cpu)?
            .to_dtype(candle_core::DType::F32)?;
        let data = crate::fused::CpuF32::new(&w);
        let data = data.slice("quantize")?;
        let tr = tile_rows(cols);
        let tiles = data
            .chunks(tr * cols)
            .map(|xs| match format {
                Format::Ggml(t) => {
                    let mut q = t.cpu_zeros(xs.len());
                    q.from_float(xs);
                    Tile::Ggml(q)
                }
                Format::Nf4 { double_quant } => Tile::Nf4(nf4::Nf4::quantize(xs, double_quant)),
            })
            .collect();
        Ok(Self {
            rows,
            cols,
            tile_rows: tr,
            format,
            tiles,
        })
    }

    /// A 2-D tensor of a GGUF file, its blocks kept as they are (copied once into tiles).
    pub fn from_qtensor(qt: &QTensor) -> Result<Self> {
        let (rows, cols) = qt.shape().dims2()?;
        let t = qt.dtype();
        let data = qt.data()?;
        if rows == 0 || !data.len().is_multiple_of(rows) {
            bail!("a {t:?} block spans two rows of a [{rows}, {cols}] tensor");
        }
        let row_bytes = data.len() / rows;
        let tr = tile_rows(cols);
        let tiles = data
            .chunks(tr * row_bytes)
            .map(|bytes| Tile::Ggml(t.from_data(Cow::Borrowed(bytes))))
            .collect();
        Ok(Self {
            rows,
            cols,
            tile_rows: tr,
            format: Format::Ggml(t),
            tiles,
        })
    }

    pub fn dims(&self) -> (usize, usize) {
        (self.rows, self.cols)
    }

    pub fn format(&self) -> Format {
        self.format
    }

    /// Bytes the blocks take.
    pub fn bytes(&self) -> usize {
        self.tiles
            .iter()
            .map(|t| match t {
                Tile::Ggml(q) => q.storage_size_in_bytes(),
                Tile::Nf4(q) => q.bytes(),
            })
            .sum()
    }

    /// Rows `[r0, r1)` of tile `i`.
    fn range(&self, i: usize) -> (usize, usize) {
        let r0 = i * self.tile_rows;
        (r0, (r0 + self.tile_rows).min(self.rows))
    }

    /// Tile `i` in f32 into `out` (`[r1 - r0, cols]`).
    fn dequantize_tile(&self, i: usize, out: &mut [f32]) -> candle_core::Result<()> {
        match &self.tiles[i] {
            Tile::Ggml(q) => match q.dequantize(out.len())? {
                CpuStorage::F32(v) => out.copy_from_slice(&v),
                _ => candle_core::bail!("dequantized blocks are not f32"),
            },
            Tile::Nf4(q) => q.dequantize_into(0, out),
        }
        Ok(())
    }

    /// The product steps: `(first tile, end tile, first row, end row)`.
    fn groups(&self) -> impl Iterator<Item = (usize, usize, usize, usize)> + '_ {
        let per = (GROUP_ELEMS / (self.tile_rows * self.cols).max(1)).max(1);
        (0..self.tiles.len()).step_by(per).map(move |t0| {
            let t1 = (t0 + per).min(self.tiles.len());
            (t0, t1, self.range(t0).0, self.range(t1 - 1).1)
        })
    }

    /// Tiles `[t0, t1)` in f32 into `buf` (resized to fit), one tile per thread.
    fn dequantize_group(
        &self,
        t0: usize,
        t1: usize,
        buf: &mut Vec<f32>,
    ) -> candle_core::Result<()> {
        use rayon::prelude::*;
        let rows = self.range(t1 - 1).1 - self.range(t0).0;
        buf.resize(rows * self.cols, 0.0);
        buf.par_chunks_mut(self.tile_rows * self.cols)
            .zip(t0..t1)
            .try_for_each(|(out, i)| self.dequantize_tile(i, out))
    }

    /// The whole matrix in f32 (tests, and devices without the tiled kernels).
    pub fn dequantize(&self, device: &Device) -> Result<Tensor> {
        let mut out = Vec::new();
        self.dequantize_group(0, self.tiles.len(), &mut out)?;
        Ok(Tensor::from_vec(out, (self.rows, self.cols), device)?)
    }

    /// Rows `ids` in f32, `[ids.len(), cols]` (an embedding lookup).
    pub fn gather(&self, ids: &[u32]) -> candle_core::Result<Vec<f32>> {
        let c = self.cols;
        let mut out = vec![0f32; ids.len() * c];
        let mut by_tile: Vec<Vec<(usize, usize)>> = vec![Vec::new(); self.tiles.len()];
        for (pos, &id) in ids.iter().enumerate() {
            let id = id as usize;
            if id >= self.rows {
                candle_core::bail!("row {id} is out of range for {} rows", self.rows);
            }
            by_tile[id / self.tile_rows].push((pos, id % self.tile_rows));
        }
        for (i, wanted) in by_tile.iter().enumerate().filter(|(_, w)| !w.is_empty()) {
            let (r0, r1) = self.range(i);
            match &self.tiles[i] {
                Tile::Ggml(q) => {
                    let local: Vec<u32> = wanted.iter().map(|&(_, r)| r as u32).collect();
                    let CpuStorage::F32(rows) = q.embedding(&local, r1 - r0, c)? else {
                        candle_core::bail!("dequantized blocks are not f32");
                    };
                    for (&(pos, _), row) in wanted.iter().zip(rows.chunks_exact(c)) {
                        out[pos * c..(pos + 1) * c].copy_from_slice(row);
                    }
                }
                Tile::Nf4(q) => {
                    for &(pos, r) in wanted {
                        q.dequantize_into(r * c, &mut out[pos * c..(pos + 1) * c]);
                    }
                }
            }
        }
        Ok(out)
    }

    /// `y = x W^T`: `x` `[m, cols]` → `[m, rows]`.
    pub fn times_t(&self, x: &[f32], m: usize) -> candle_core::Result<Vec<f32>> {
        let (n, k) = (self.rows, self.cols);
        if x.len() != m * k {
            candle_core::bail!(
                "quantized product: input of {} values for [{m}, {k}]",
                x.len()
            );
        }
        let mut y = vec![0f32; m * n];
        let mut w = Vec::new();
        for (t0, t1, r0, r1) in self.groups() {
            self.dequantize_group(t0, t1, &mut w)?;
            gemm(
                MatMut::rows(&mut y[r0..], m, r1 - r0, n),
                false,
                Mat::dense(x, m, k),
                Mat::dense(&w, r1 - r0, k).t(),
                1.0,
                Threads::Pool,
            )?;
        }
        Ok(y)
    }

    /// `dx (+)= g W`: `g` `[m, rows]`, `dx` `[m, cols]`; groups of rows summed in order
    /// (deterministic).
    pub fn grad_into(
        &self,
        g: &[f32],
        m: usize,
        dx: &mut [f32],
        accumulate: bool,
    ) -> candle_core::Result<()> {
        let (n, k) = (self.rows, self.cols);
        if g.len() != m * n || dx.len() != m * k {
            candle_core::bail!("quantized gradient: shapes do not fit [{n}, {k}]");
        }
        let mut w = Vec::new();
        for (t0, t1, r0, r1) in self.groups() {
            self.dequantize_group(t0, t1, &mut w)?;
            gemm(
                MatMut::dense(dx, m, k),
                accumulate || t0 > 0,
                Mat::rows(&g[r0..], m, r1 - r0, n),
                Mat::dense(&w, r1 - r0, k),
                1.0,
                Threads::Pool,
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{max_rel_diff, random_normal};
    use crate::frozen::Frozen;
    use crate::lora::{ForwardMode, Linear, frozen_linear};
    use candle_core::Var;
    use candle_nn::VarMap;
    use std::sync::Arc;

    /// Every format we train with, and the largest `max |y − x W^T| / max |x W^T|` its rounding
    /// gives on `weight()` (4-bit levels are 1/8 to 1/16 of a block's range).
    const FORMATS: [(Format, f32); 6] = [
        (Format::Ggml(GgmlDType::Q8_0), 0.01),
        (Format::Ggml(GgmlDType::Q4_0), 0.15),
        (Format::Ggml(GgmlDType::Q4K), 0.15),
        (Format::Ggml(GgmlDType::Q5_0), 0.08),
        (
            Format::Nf4 {
                double_quant: false,
            },
            0.15,
        ),
        (Format::Nf4 { double_quant: true }, 0.15),
    ];

    /// `[600, 512]`: five tiles of 128 rows, the last partial (one product step).
    fn weight() -> Tensor {
        random_normal("w", &[600, 512], 1, 0.05).expect("weight")
    }

    fn input() -> Result<Var> {
        Ok(Var::from_tensor(&random_normal(
            "x",
            &[3, 7, 512],
            2,
            1.0,
        )?)?)
    }

    /// `Σ y ⊙ r` for a fixed random `r`: a loss whose gradient reaches every output.
    fn loss(y: &Tensor) -> Result<Tensor> {
        let r = random_normal("r", y.dims(), 3, 1.0)?;
        Ok((y * r)?.sum_all()?)
    }

    #[test]
    fn tiles_split_rows_unevenly() {
        let q = QuantMatrix::quantize(&weight(), Format::Ggml(GgmlDType::Q8_0)).expect("q");
        assert_eq!((q.tiles.len(), q.tile_rows), (5, 128));
    }

    #[test]
    fn forward_is_within_the_rounding_and_backward_is_the_dequantized_weights() -> Result<()> {
        let w = weight();
        let x = input()?;
        let exact = frozen_linear(x.as_tensor(), &w)?;
        for (format, tol) in FORMATS {
            let q = Arc::new(QuantMatrix::quantize(&w, format)?);
            let deq = q.dequantize(&Device::Cpu)?;
            let frozen = Frozen::Quant(q.clone());
            let y = frozen.linear(x.as_tensor())?;
            let y_deq = frozen_linear(x.as_tensor(), &deq)?;
            let what = format.name();
            assert!(max_rel_diff(&y, &y_deq)? < 1e-5, "{what}");
            let err = max_rel_diff(&y, &exact)?;
            assert!(err < tol && err > 0.0, "{what}: {err}");
            let g = loss(&y)?.backward()?;
            let g_deq = loss(&y_deq)?.backward()?;
            let (Some(dx), Some(dx_deq)) = (g.get(x.as_tensor()), g_deq.get(x.as_tensor())) else {
                panic!("{what}: no input gradient");
            };
            assert!(max_rel_diff(dx, dx_deq)? < 1e-5, "{what}");
            // No weight-sized gradient exists anywhere in the graph.
            let weight_sized = g
                .get_ids()
                .filter_map(|id| g.get_id(*id))
                .filter(|t| t.dims() == [600, 512])
                .count();
            assert_eq!(weight_sized, 0, "{what}");
        }
        Ok(())
    }

    /// A matrix of several product steps (the gradient accumulates across them).
    #[test]
    fn products_span_several_steps() -> Result<()> {
        let w = random_normal("w", &[2200, 512], 1, 0.05)?;
        let q = Arc::new(QuantMatrix::quantize(&w, Format::Ggml(GgmlDType::Q4_0))?);
        assert_eq!(q.groups().count(), 2);
        let deq = q.dequantize(&Device::Cpu)?;
        let x = input()?;
        let y = Frozen::Quant(q).linear(x.as_tensor())?;
        let y_deq = frozen_linear(x.as_tensor(), &deq)?;
        assert!(max_rel_diff(&y, &y_deq)? < 1e-5);
        let (g, g_deq) = (loss(&y)?.backward()?, loss(&y_deq)?.backward()?);
        let (Some(dx), Some(dx_deq)) = (g.get(x.as_tensor()), g_deq.get(x.as_tensor())) else {
            panic!("no input gradient");
        };
        assert!(max_rel_diff(dx, dx_deq)? < 1e-5);
        Ok(())
    }

    #[test]
    fn fused_lora_layer_on_blocks_equals_the_composed_layer_on_their_weights() -> Result<()> {
        let w = weight();
        let (a, b) = (
            random_normal("a", &[8, 512], 4, 0.05)?,
            random_normal("b", &[600, 8], 5, 0.05)?,
        );
        let q = Arc::new(QuantMatrix::quantize(
            &w,
            Format::Nf4 { double_quant: true },
        )?);
        let mut fused = Linear::new("l", Frozen::Quant(q.clone()), None);
        fused.attach_lora_from(&a, &b, 2.0, 0.1, &VarMap::new())?;
        let mut composed = Linear::new("l", q.dequantize(&Device::Cpu)?, None);
        composed.attach_lora_from(&a, &b, 2.0, 0.1, &VarMap::new())?;
        composed.use_fused_op = false;
        let x = input()?;
        assert!(fused.uses_fused_op(x.as_tensor()) && !composed.uses_fused_op(x.as_tensor()));
        let mode = ForwardMode {
            dropout_seed: Some(9),
        };
        let (y1, y2) = (
            fused.forward(x.as_tensor(), mode)?,
            composed.forward(x.as_tensor(), mode)?,
        );
        assert!(max_rel_diff(&y1, &y2)? < 1e-5);
        let (g1, g2) = (loss(&y1)?.backward()?, loss(&y2)?.backward()?);
        let pick = |lin: &Linear, g: &candle_core::backprop::GradStore| -> Vec<Tensor> {
            let l = lin.lora.as_ref().expect("adapter");
            [x.as_tensor(), l.a.as_tensor(), l.b.as_tensor()]
                .iter()
                .map(|t| g.get(t).expect("gradient").clone())
                .collect()
        };
        for (d1, d2) in pick(&fused, &g1).iter().zip(&pick(&composed, &g2)) {
            assert!(max_rel_diff(d1, d2)? < 1e-5);
        }
        Ok(())
    }

    #[test]
    fn embedding_rows_and_kept_gguf_blocks_read_back_exactly() -> Result<()> {
        let w = weight();
        let ids = Tensor::new(&[[599u32, 0, 511], [512, 7, 599]], &Device::Cpu)?;
        for (format, _) in FORMATS {
            let q = Arc::new(QuantMatrix::quantize(&w, format)?);
            let deq = q.dequantize(&Device::Cpu)?;
            let rows = Frozen::Quant(q).embedding(&ids)?;
            let want = deq.index_select(&ids.flatten_all()?, 0)?;
            assert_eq!(max_rel_diff(&rows, &want)?, 0.0, "{}", format.name());
        }
        // `keep`: a GGUF tensor's blocks, re-tiled, give candle's own dequantization.
        for t in [
            GgmlDType::Q4_0,
            GgmlDType::Q8_0,
            GgmlDType::Q4K,
            GgmlDType::F16,
        ] {
            let qt = QTensor::quantize(&w, t)?;
            let kept = QuantMatrix::from_qtensor(&qt)?;
            assert_eq!(kept.bytes(), qt.storage_size_in_bytes());
            let diff = max_rel_diff(
                &kept.dequantize(&Device::Cpu)?,
                &qt.dequantize(&Device::Cpu)?,
            )?;
            assert_eq!(diff, 0.0, "{t:?}");
        }
        let out_of_range = Tensor::new(&[600u32], &Device::Cpu)?;
        let q = Frozen::Quant(Arc::new(QuantMatrix::quantize(&w, FORMATS[0].0)?));
        assert!(q.embedding(&out_of_range).is_err());
        Ok(())
    }

    #[test]
    fn same_bits_whatever_the_thread_count() -> Result<()> {
        let q = Frozen::Quant(Arc::new(QuantMatrix::quantize(&weight(), FORMATS[2].0)?));
        let x = input()?;
        let bits = |threads: usize| -> Result<Vec<Vec<u32>>> {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()?;
            pool.install(|| {
                let y = q.linear(x.as_tensor())?;
                let g = loss(&y)?.backward()?;
                let dx = g.get(x.as_tensor()).expect("gradient").clone();
                Ok(crate::fixtures::bits(&[y, dx])?)
            })
        };
        assert!(bits(1)? == bits(3)?);
        Ok(())
    }

    #[test]
    fn formats_fall_back_like_llama_quantize_and_weigh_what_they_should() -> Result<()> {
        assert_eq!(fitting(GgmlDType::Q4K, 576), GgmlDType::Q5_0);
        assert_eq!(fitting(GgmlDType::Q4K, 512), GgmlDType::Q4K);
        assert_eq!(fitting(GgmlDType::Q8_0, 48), GgmlDType::F16);
        assert_eq!(
            BaseQuant::Nf4 { double_quant: true }.linear_format(96),
            Some(Format::Ggml(GgmlDType::Q8_0)),
            "NF4 needs 64-blocks"
        );
        assert_eq!(BaseQuant::Keep.linear_format(512), None);
        let f32_bytes = 600 * 512 * 4;
        for (format, bits_x100) in [
            (Format::Ggml(GgmlDType::Q8_0), 850),
            (Format::Ggml(GgmlDType::Q4_0), 450),
            (Format::Ggml(GgmlDType::Q4K), 450),
            (
                Format::Nf4 {
                    double_quant: false,
                },
                450,
            ),
        ] {
            let q = QuantMatrix::quantize(&weight(), format)?;
            assert_eq!(
                q.bytes() * 8 * 100,
                f32_bytes / 4 * bits_x100,
                "{}",
                format.name()
            );
        }
        for s in ["q8_0", "q4_0", "q4_k", "nf4", "keep"] {
            assert_eq!(s.parse::<BaseQuant>()?.name(), s);
        }
        assert!("q5_k".parse::<BaseQuant>().is_err());
        Ok(())
    }
}
