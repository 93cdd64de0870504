//! The inference forward: a KV cache and [`CausalLm::forward_cached`].
//!
//! Unlike the training forward ([`CausalLm::hidden`]) this records no graph (LoRA Vars are
//! detached) and uses candle's fused inference kernels (`rms_norm`, `rope`,
//! `softmax_last_dim`), which exist on the CPU and on CUDA but have no backward pass.
//!
//! A batch is left-padded: row `i` starts with `pad[i]` filler columns that no real token
//! attends to, and its token at column `c` sits at rope position `c - pad[i]`, so a row's
//! values do not depend on the other rows (batched = one at a time, up to float rounding).

use super::{attend, simd};
use crate::frozen::Frozen;
use crate::fused::{CpuF32, f32_vec};
use crate::lora::Linear;
use crate::model::{CausalLm, InferBlocks};
use anyhow::{Context, Result, bail};
use candle_core::{CpuStorage, D, DType, Device, Storage, Tensor};
use std::sync::OnceLock;

/// Keys and values of every layer for a left-padded batch, preallocated to a fixed capacity.
///
/// Why not `candle_nn::kv_cache::KvCache`: generation drops finished rows from the batch
/// ([`KvCache::retain`]) and needs each row's padding for the mask and positions; the storage
/// trick is the same (writes into a preallocated buffer, `narrow` to read).
#[derive(Debug, Clone)]
pub struct KvCache {
    /// Per layer, `[b, kv_heads, capacity, head_dim]` keys and values (f16 or the model's dtype,
    /// see [`Self::new`]).
    layers: Vec<(Tensor, Tensor)>,
    /// Columns filled so far (padding included).
    len: usize,
    capacity: usize,
    /// Left padding of each row.
    pad: Vec<usize>,
}

impl KvCache {
    /// An empty cache for `pad.len()` rows with the given left padding, holding up to
    /// `capacity` columns (padding + prompt + generated tokens).
    pub fn new(model: &CausalLm, pad: Vec<usize>, capacity: usize) -> Result<Self> {
        let c = &model.config;
        let shape = (pad.len(), c.num_key_value_heads, capacity, c.head_dim);
        // Keys and values in f16 where the layers multiply by blocks on the CPU (their inputs
        // rounded to 8 bits err far more; llama.cpp's default cache is f16 too) and the AVX-512
        // attention reads them: at batch 8 the f32 cache was a fifth of a step's bytes.
        let dtype = if fused_attention(model)
            && simd::supported(c.head_dim)
            && model.layers.iter().any(|l| l.q.quantized.is_some())
        {
            DType::F16
        } else {
            model.dtype()
        };
        let zeros = || Tensor::zeros(shape, dtype, model.device());
        let layers = (0..c.num_hidden_layers)
            .map(|_| Ok((zeros()?, zeros()?)))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            layers,
            len: 0,
            capacity,
            pad,
        })
    }

    /// Rows in the batch.
    pub fn batch(&self) -> usize {
        self.pad.len()
    }

    /// Columns filled so far (padding included).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Keep only the given rows (in this order), e.g. to stop spending work on finished
    /// sequences. Copies the cache once.
    pub fn retain(&mut self, rows: &[usize]) -> Result<()> {
        if rows.iter().any(|&r| r >= self.pad.len()) {
            bail!("kv cache: row out of range in {rows:?}");
        }
        let Some((k0, _)) = self.layers.first() else {
            self.pad = rows.iter().map(|&r| self.pad[r]).collect();
            return Ok(());
        };
        let idx: Vec<u32> = rows.iter().map(|&r| r as u32).collect();
        let idx = Tensor::new(idx.as_slice(), k0.device())?;
        for (k, v) in &mut self.layers {
            *k = k.index_select(&idx, 0)?.contiguous()?;
            *v = v.index_select(&idx, 0)?.contiguous()?;
        }
        self.pad = rows.iter().map(|&r| self.pad[r]).collect();
        Ok(())
    }

    /// Write `k`, `v` (`[b, kv_heads, s, head_dim]`) of `layer` at the current end; returns
    /// all keys and values so far. [`Self::advance`] moves the end once all layers are done.
    fn append(&mut self, layer: usize, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let (kc, vc) = self.buffers(layer)?;
        kc.slice_set(&k.to_dtype(kc.dtype())?.contiguous()?, 2, self.len)?;
        vc.slice_set(&v.to_dtype(vc.dtype())?.contiguous()?, 2, self.len)?;
        self.so_far(layer, k.dim(2)?)
    }

    /// `layer`'s key and value buffers.
    fn buffers(&self, layer: usize) -> Result<&(Tensor, Tensor)> {
        self.layers
            .get(layer)
            .with_context(|| format!("kv cache has no layer {layer}"))
    }

    /// `layer`'s keys and values up to the `s` columns just written at the current end.
    fn so_far(&self, layer: usize, s: usize) -> Result<(Tensor, Tensor)> {
        let (kc, vc) = self.buffers(layer)?;
        Ok((
            kc.narrow(2, 0, self.len + s)?,
            vc.narrow(2, 0, self.len + s)?,
        ))
    }

    /// [`Self::append`] for the fused attention: `k`, `v` are `[b, s, kv_heads·head_dim]` as
    /// the products give them, and the keys are rotated by `rope` on the way in. The heads'
    /// layout change, rope, the conversion to the cache's dtype and the copy are one pass per
    /// tensor instead of five candle ops each (a tenth of a batch-8 step outside the products).
    fn append_rotated(
        &mut self,
        layer: usize,
        k: &Tensor,
        v: &Tensor,
        rope: &attend::Rope<'_>,
    ) -> Result<(Tensor, Tensor)> {
        let (kc, vc) = self.buffers(layer)?;
        let at = self.len;
        kc.inplace_op2(
            k,
            &WriteColumns {
                at,
                rope: Some(rope),
            },
        )?;
        vc.inplace_op2(v, &WriteColumns { at, rope: None })?;
        self.so_far(layer, k.dim(1)?)
    }

    /// Requests the lines that [`Self::append_rotated`] will write for `layer`'s next column,
    /// so that they arrive while the layer's first products run.
    fn prefetch_column(&self, layer: usize) -> Result<()> {
        let (kc, vc) = self.buffers(layer)?;
        for t in [kc, vc] {
            let (guard, l) = t.storage_and_layout();
            let (b, nkv, capacity, hd) = l.shape().dims4()?;
            let (Some((start, _)), true) = (l.contiguous_offsets(), self.len < capacity) else {
                continue;
            };
            let column = |i: usize| start + (i * capacity + self.len) * hd..;
            for i in 0..b * nkv {
                match &*guard {
                    Storage::Cpu(CpuStorage::F16(v)) => simd::prefetch(&v[column(i)][..hd]),
                    Storage::Cpu(CpuStorage::F32(v)) => simd::prefetch(&v[column(i)][..hd]),
                    _ => {}
                }
            }
        }
        Ok(())
    }

    fn advance(&mut self, s: usize) {
        self.len += s;
    }

    /// Rope positions `[b, s]` of the next `s` columns (padding columns get 0).
    fn positions(&self, s: usize) -> Vec<f32> {
        self.pad
            .iter()
            .flat_map(|&p| (self.len..self.len + s).map(move |c| c.saturating_sub(p) as f32))
            .collect()
    }

    /// Additive mask `[b, 1, 1, s, len + s]` for the next `s` columns: a real column sees the
    /// real columns up to itself; a padding column sees only itself (so its values stay finite
    /// and the masked scores of real queries are exactly `-inf`).
    fn mask(&self, s: usize, dtype: DType, device: &Device) -> Result<Tensor> {
        let t = self.len + s;
        let mut m = Vec::with_capacity(self.pad.len() * s * t);
        for &p in &self.pad {
            for q in self.len..self.len + s {
                for k in 0..t {
                    m.push(if sees(p, q, k) {
                        0f32
                    } else {
                        f32::NEG_INFINITY
                    });
                }
            }
        }
        Ok(Tensor::from_vec(m, (self.pad.len(), 1, 1, s, t), device)?.to_dtype(dtype)?)
    }
}

/// Whether the query at column `query` of a row with `pad` padding columns sees the key at
/// column `key`: see [`visible`].
fn sees(pad: usize, query: usize, key: usize) -> bool {
    visible(pad, query).contains(&key)
}

/// The key columns that the query at column `query` of a row with `pad` padding columns sees:
/// a real column the real columns up to itself; a padding column only itself.
pub(super) fn visible(pad: usize, query: usize) -> std::ops::Range<usize> {
    pad.min(query)..query + 1
}

/// Writes one layer's new keys or values, `[b, s, kv_heads·head_dim]` F32, into a cache buffer
/// `[b, kv_heads, capacity, head_dim]` (f32 or f16, contiguous) at column `at`, rotated by
/// `rope` where given.
struct WriteColumns<'a> {
    at: usize,
    rope: Option<&'a attend::Rope<'a>>,
}

impl WriteColumns<'_> {
    /// `src` holds `s` new columns of each row; `dst` is `[b, nkv, capacity, hd]`.
    fn write<T: simd::CacheValue>(&self, dst: &mut [T], src: &[f32], s: usize, dims: [usize; 3]) {
        let [nkv, capacity, hd] = dims;
        for (col, heads) in src.chunks_exact(nkv * hd).enumerate() {
            let (bi, i) = (col / s, col % s);
            for (h, x) in heads.chunks_exact(hd).enumerate() {
                let out = &mut dst[((bi * nkv + h) * capacity + self.at + i) * hd..][..hd];
                attend::write_head(x, self.rope.map(|r| r.tables(col, hd)), out);
            }
        }
    }
}

impl candle_core::InplaceOp2 for WriteColumns<'_> {
    fn name(&self) -> &'static str {
        "kv-cache-write"
    }

    fn cpu_fwd(
        &self,
        dst: &mut CpuStorage,
        dl: &candle_core::Layout,
        src: &CpuStorage,
        sl: &candle_core::Layout,
    ) -> candle_core::Result<()> {
        let (b, nkv, capacity, hd) = dl.shape().dims4()?;
        let src = crate::fused::f32_slice(src, sl, "kv cache write")?;
        // New columns per row.
        let s = src.len() / (b * nkv * hd).max(1);
        let Some((start, end)) = dl.contiguous_offsets() else {
            candle_core::bail!("kv cache write: the cache is not contiguous");
        };
        if s == 0 || s * b * nkv * hd != src.len() || self.at + s > capacity {
            candle_core::bail!(
                "kv cache write: {} values for {:?} at column {}",
                src.len(),
                dl.dims(),
                self.at
            );
        }
        let dims = [nkv, capacity, hd];
        match dst {
            CpuStorage::F16(d) => self.write(&mut d[start..end], src, s, dims),
            CpuStorage::F32(d) => self.write(&mut d[start..end], src, s, dims),
            _ => candle_core::bail!("kv cache write: the cache is neither f16 nor f32"),
        }
        Ok(())
    }
}

/// `x W^T` for `x` `[rows, k]`, `W` `[n, k]`. A few rows (batched decoding): `(W x^T)^T`
/// keeps W as gemm's row-major left operand: 2-4x faster on the CPU than `x W^T` for 8 rows of
/// SmolLM2's MLP shapes in a one-off matmul probe, and `bench_generate`'s batch-8 decode went
/// from 28.5 to 54 tok/s (2 shared cores, noisy). One row (and prefill) stays `x W^T`.
fn times_wt(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let rows = x.dim(0)?;
    Ok(if (2..=32).contains(&rows) {
        w.matmul(&x.t()?)?.t()?.contiguous()?
    } else {
        x.matmul(&w.t()?)?
    })
}

/// `x W^T` for a frozen matrix: [`times_wt`] on a tensor, the tiled kernel on blocks.
fn frozen_times(x: &Tensor, w: &Frozen) -> Result<Tensor> {
    match w {
        Frozen::Dense(w) => times_wt(x, w),
        blocks => blocks.linear(x),
    }
}

/// Most rows multiplied by candle's quantized blocks; more go through the f32 weight. Few rows
/// (decoding: a row per sequence) are bound by reading the weights, so fewer bytes win; many are
/// bound by arithmetic, where gemm on f32 caught up: SmolLM2 Q4_1 (blocks re-encoded as Q8_0 and
/// padded for candle's VNNI kernel, as before [`crate::vnni`]), 2 threads,
/// examples/bench_generate, prompt tokens/s on blocks vs f32: 64 rows ~570 vs ~270, 256 rows 541
/// vs 492, 512 rows ~520 vs ~600. The VNNI tiles take any number of rows: 512 rows ~1200 vs
/// ~620, 1024 rows (prompts of 256) 800-1000 vs ~580. Accuracy is not the limit: fed the f32
/// model's greedy text, the next token on blocks matched f32's 487 of 512 times with 64-token
/// prompts prefilled on blocks, 482 with them on f32 (the activations are rounded to 8 bits
/// either way while decoding).
const QUANTIZED_MAX_ROWS: usize = 256;

/// Whether `rows` rows are multiplied by `q` rather than by the f32 weight.
fn on_blocks(q: &InferBlocks, rows: usize) -> bool {
    matches!(q, InferBlocks::Tiles(_)) || rows <= QUANTIZED_MAX_ROWS
}

/// Logits computed again on the dense output matrix after the first pass on its blocks: the
/// leading ones, which greedy decoding, top-k/top-p and the constrained decoder look at. The rest
/// keep the blocks' value, whose error is far below the gap to the leaders.
const RESCORED_LOGITS: usize = 64;

/// Logits of final hidden states `hn` `[rows, hidden]`, row-major `[rows, vocab]` on the host:
/// the generation loop reads them there, and at batch 8 each copy of SmolLM2's 1.5 MB of logits
/// (tensor to vector and back, then into rows) cost about as much as sampling all eight rows.
fn output_logits(model: &CausalLm, hn: &Tensor) -> Result<Vec<f32>> {
    let rows = hn.dim(0)?;
    match (&model.lm_head_blocks, model.lm_head.dense()) {
        (Some(blocks), Some(dense)) if on_blocks(blocks, rows) => {
            let mut logits = blocks.times_host(hn)?;
            let tiles = match blocks {
                InferBlocks::Tiles(t) if model.lm_head_blocks_exact => Some(t.as_ref()),
                _ => None,
            };
            rescore_leaders(&mut logits, hn, dense, tiles, RESCORED_LOGITS)?;
            Ok(logits)
        }
        _ => Ok(f32_vec(&frozen_times(hn, &model.lm_head)?)?),
    }
}

/// `logits` (`[rows, vocab]`, row-major) with each row's `k` largest entries replaced by the
/// exact `hn · w_i`, `w` the dense output matrix, or `tiles` where given (they must hold `w`'s
/// values exactly). On the CPU in F32 the rows run on candle's pool, each leader a dot product
/// with its row of `w`: at batch 8 the per-row candle ops (a row gather and a matmul each) took
/// ~1.3 ms of a step on one thread (SmolLM2, 2 threads).
fn rescore_leaders(
    logits: &mut [f32],
    hn: &Tensor,
    w: &Tensor,
    tiles: Option<&crate::vnni::PackedQ8>,
    k: usize,
) -> Result<()> {
    let rows = hn.dim(0)?;
    let vocab = logits.len() / rows.max(1);
    let dev = hn.device();
    if crate::fused::supported(hn) && crate::fused::supported(w) {
        let (hn, w) = (hn.contiguous()?, w.contiguous()?);
        let (hv, wv) = (CpuF32::new(&hn), CpuF32::new(&w));
        let (hs, ws) = (hv.slice("rescore hn")?, wv.slice("rescore w")?);
        let hidden = hn.dim(1)?;
        let source = match tiles {
            Some(t) => ExactRows::Tiles(t),
            None => ExactRows::Dense(ws, hidden),
        };
        let found: Vec<OnceLock<Vec<(u32, f32)>>> = (0..rows).map(|_| OnceLock::new()).collect();
        let first: &[f32] = logits;
        candle_core::utils::barrier_pool().execute_chunked(rows, |range| {
            let mut buf = vec![0f32; hidden];
            for r in range {
                let h = &hs[r * hidden..(r + 1) * hidden];
                let ids = leaders(&first[r * vocab..(r + 1) * vocab], k);
                for &i in &ids {
                    source.prefetch(i);
                }
                let exact = ids
                    .into_iter()
                    .map(|i| (i, dot(source.row(i, &mut buf), h)))
                    .collect();
                let _ = found[r].set(exact);
            }
        });
        for (r, cell) in found.into_iter().enumerate() {
            for (i, v) in cell.into_inner().unwrap_or_default() {
                logits[r * vocab + i as usize] = v;
            }
        }
    } else {
        for (r, row) in logits.chunks_exact_mut(vocab).enumerate() {
            let ids = leaders(row, k);
            if ids.is_empty() {
                continue;
            }
            let rows = w.index_select(&Tensor::new(ids.as_slice(), dev)?, 0)?;
            let exact = rows.matmul(&hn.narrow(0, r, 1)?.t()?)?.flatten_all()?;
            for (&i, v) in ids
                .iter()
                .zip(exact.to_dtype(DType::F32)?.to_vec1::<f32>()?)
            {
                row[i as usize] = v;
            }
        }
    }
    Ok(())
}

/// Where [`rescore_leaders`] reads the output matrix's exact rows on the CPU.
enum ExactRows<'a> {
    /// The dense matrix, `[vocab, hidden]` row-major.
    Dense(&'a [f32], usize),
    /// The tiles the first pass just streamed: a leader's row is gathered from its strip's
    /// tiles (10 KB, in cache) rather than read from the dense matrix (2.3 KB, but cold: nothing
    /// else reads it). SmolLM2, 2 threads, timers: the dense rows took from 0.2 to 1 ms of a step
    /// at batch 1 and from 0.6 to 2.8 ms at batch 8, run to run.
    Tiles(&'a crate::vnni::PackedQ8),
}

impl ExactRows<'_> {
    /// Asks for row `i` ahead of [`Self::row`]. The dense rows are all requested into L2 first,
    /// so that they arrive together rather than one row's latency after another: rescoring went
    /// from ~0.37 to ~0.30 ms of a batch-8 step (SmolLM2, timers, 3 runs); one row at a time a
    /// few leaders ahead gave nothing.
    fn prefetch(&self, i: u32) {
        if let Self::Dense(ws, hidden) = self {
            simd::prefetch_l2(&ws[i as usize * hidden..][..*hidden]);
        }
    }

    /// Row `i`, from the matrix or written into `buf` (`hidden` values).
    fn row<'b>(&'b self, i: u32, buf: &'b mut [f32]) -> &'b [f32] {
        match self {
            Self::Dense(ws, hidden) => &ws[i as usize * hidden..][..*hidden],
            Self::Tiles(t) => {
                t.row(i as usize, buf);
                buf
            }
        }
    }
}

/// `a · b` summed in 16 lanes, then across them: a fixed order the compiler vectorizes. One running
/// sum (the order `Iterator::sum` must keep) was 576 dependent additions per SmolLM2 logit, 1.2%
/// of a batch-8 run in perf for the 512 logits rescored each step.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    const LANES: usize = 16;
    let mut acc = [0f32; LANES];
    let (xs, ys) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f32 = xs
        .remainder()
        .iter()
        .zip(ys.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in xs.zip(ys) {
        for ((s, x), y) in acc.iter_mut().zip(x).zip(y) {
            *s += x * y;
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Ids of the `k` largest values in descending order, ties to the smaller id, NaN never (the
/// sampler refuses a row holding one). A sorted list of the leaders so far, fed only values
/// at least the `k`-th largest of the blocks' maxima: `k` blocks reach that floor, so every
/// leader does too. On a row of 49152 normal logits that leaves a few dozen candidates beyond
/// the `k` instead of several hundred inserts (each a search and a shift): ~20 µs a row rather
/// than ~36 (k = 64, the rows in cache), where the leaders took about as long as the rescoring
/// products.
fn leaders(row: &[f32], k: usize) -> Vec<u32> {
    const BLOCK: usize = 16;
    if k == 0 {
        return Vec::new();
    }
    // Vectorized per block; NaN never wins (`v > m` is false for it).
    let maxima: Vec<f32> = row
        .chunks(BLOCK)
        .map(|block| {
            block
                .iter()
                .fold(f32::NEG_INFINITY, |m, &v| if v > m { v } else { m })
        })
        .collect();
    let floor = if maxima.len() > k {
        let mut order = maxima.clone();
        *order.select_nth_unstable_by(k - 1, |a, b| b.total_cmp(a)).1
    } else {
        f32::NEG_INFINITY
    };
    let mut top: Vec<(f32, u32)> = Vec::with_capacity(k + 1);
    for (b, (block, &most)) in row.chunks(BLOCK).zip(&maxima).enumerate() {
        if most < floor || (top.len() == k && most <= top[k - 1].0) {
            continue;
        }
        for (j, &v) in block.iter().enumerate() {
            if v.is_nan() || v < floor || (top.len() == k && v <= top[k - 1].0) {
                continue;
            }
            let at = top.partition_point(|&(t, _)| t >= v);
            top.insert(at, (v, (b * BLOCK + j) as u32));
            top.truncate(k);
        }
    }
    top.into_iter().map(|(_, i)| i).collect()
}

/// `x W^T (+ b) (+ scale · (x A^T) B^T)` without autograd. The one place the inference path
/// touches a base weight, so a quantized weight (`candle_core::quantized::QMatMul`) plugs in
/// here.
fn infer_linear(lin: &Linear, x: &Tensor) -> Result<Tensor> {
    let [y] = infer_linears([lin], x)?;
    Ok(y)
}

/// [`infer_linear`] of several layers that read the same input (q/k/v, gate/up).
fn infer_linears<const N: usize>(lins: [&Linear; N], x: &Tensor) -> Result<[Tensor; N]> {
    let (rows, k) = (x.elem_count() / x.dim(D::Minus1)?, x.dim(D::Minus1)?);
    let x2 = x.reshape((rows, k))?;
    let mut shared = shared_blocks_times(lins, &x2)?.map(|ys| ys.into_iter());
    let mut out = Vec::with_capacity(N);
    for lin in lins {
        let mut y = match (shared.as_mut().and_then(Iterator::next), &lin.quantized) {
            (Some(y), _) => y,
            (None, Some(q)) if on_blocks(q, rows) => q.times(&x2)?,
            (None, _) => frozen_times(&x2, &lin.weight)?,
        };
        if let Some(b) = &lin.bias {
            y = y.broadcast_add(b)?;
        }
        if let Some(l) = &lin.lora {
            let dt = x.dtype();
            let a = l.a.as_tensor().detach().to_dtype(dt)?;
            let b = l.b.as_tensor().detach().to_dtype(dt)?;
            let d = x2.matmul(&a.t()?)?.matmul(&b.t()?)?;
            y = (y + (d * l.scale)?)?;
        }
        out.push(y.reshape(with_last_dim(x, y.dim(1)?))?);
    }
    out.try_into()
        .map_err(|_| anyhow::anyhow!("infer_linears: output count"))
}

/// `x W_i^T` for the blocks of several layers in one call, where all have blocks of one kind:
/// the input is rounded to 8 bits once and the products share one parallel region (at batch 8
/// the rounding alone was ~18% of a step when each layer did it: perf, SmolLM2). `None` where
/// they do not.
fn shared_blocks_times<const N: usize>(
    lins: [&Linear; N],
    x: &Tensor,
) -> Result<Option<[Tensor; N]>> {
    use candle_core::quantized::{QMatMul, QTensor};
    if N < 2 {
        return Ok(None);
    }
    let tiles: Vec<_> = lins
        .iter()
        .filter_map(|l| match &l.quantized {
            Some(InferBlocks::Tiles(w)) => Some(w.as_ref()),
            _ => None,
        })
        .collect();
    if let Ok(tiles) = tiles.try_into() {
        return Ok(Some(crate::vnni::tensor_products(tiles, x)?));
    }
    let ggml: Vec<&QTensor> = lins
        .iter()
        .filter_map(|l| match &l.quantized {
            Some(InferBlocks::Candle(QMatMul::QTensor(t))) => Some(t.as_ref()),
            _ => None,
        })
        .collect();
    if ggml.len() < N || x.dim(0)? > QUANTIZED_MAX_ROWS {
        return Ok(None);
    }
    let ys = QTensor::gemv_fused_shared_lhs(&ggml, &x.contiguous()?)?;
    Ok(ys.and_then(|ys| ys.try_into().ok()))
}

/// The MLP's gated hidden state in one parallel region ([`crate::vnni::gated_products`]) where
/// both layers are bare VNNI tiles (no bias, no adapter) and the activation is SiLU on the CPU
/// in F32; `None` elsewhere. SmolLM2, batch 8: the products' two outputs and the separate gate
/// pass took ~12 µs a layer beyond the products (timers).
fn gated_tiles(
    gate: &Linear,
    up: &Linear,
    act: candle_nn::Activation,
    x: &Tensor,
) -> Result<Option<Tensor>> {
    let (Some(InferBlocks::Tiles(g)), Some(InferBlocks::Tiles(u))) =
        (&gate.quantized, &up.quantized)
    else {
        return Ok(None);
    };
    let bare = |l: &Linear| l.bias.is_none() && l.lora.is_none();
    if !matches!(act, candle_nn::Activation::Silu)
        || !bare(gate)
        || !bare(up)
        || !crate::fused::supported(x)
    {
        return Ok(None);
    }
    let rows = x.elem_count() / x.dim(D::Minus1)?;
    let Some(h) = crate::vnni::gated_products(g, u, &f32_vec(x)?, rows)? else {
        return Ok(None);
    };
    Ok(Some(Tensor::from_vec(
        h,
        with_last_dim(x, g.dims().0),
        x.device(),
    )?))
}

/// `x`'s shape with its last dimension `n`: a layer's output shape for its input `x`.
fn with_last_dim(x: &Tensor, n: usize) -> Vec<usize> {
    let mut dims = x.dims().to_vec();
    if let Some(last) = dims.last_mut() {
        *last = n;
    }
    dims
}

/// `act(g) · u`, the MLP's gated hidden state. SiLU on the CPU in F32 is one pass on candle's
/// pool with candle's formula; candle's two ops (rayon, whose threads then compete with the pool's
/// spinning worker on 2 cores) took ~50 µs a layer at batch 8 (SmolLM2).
fn gated(g: &Tensor, u: &Tensor, act: candle_nn::Activation) -> Result<Tensor> {
    const CHUNK: usize = 2048;
    let fused = matches!(act, candle_nn::Activation::Silu)
        && crate::fused::supported(g)
        && crate::fused::supported(u)
        && g.dims() == u.dims();
    if !fused {
        return Ok((g.apply(&act)? * u)?);
    }
    let (g, u) = (g.contiguous()?, u.contiguous()?);
    let (gv, uv) = (CpuF32::new(&g), CpuF32::new(&u));
    let (gs, us) = (gv.slice("gated g")?, uv.slice("gated u")?);
    let vector = simd::supported(16);
    let parts: Vec<OnceLock<Vec<f32>>> = (0..gs.len().div_ceil(CHUNK))
        .map(|_| OnceLock::new())
        .collect();
    candle_core::utils::barrier_pool().execute_chunked(parts.len(), |range| {
        for p in range {
            let span = p * CHUNK..((p + 1) * CHUNK).min(gs.len());
            let (g, u) = (&gs[span.clone()], &us[span]);
            let out = if vector {
                let mut out = vec![0f32; g.len()];
                simd::silu_gate(g, u, &mut out);
                out
            } else {
                g.iter()
                    .zip(u)
                    .map(|(&g, &u)| g / (1.0 + (-g).exp()) * u)
                    .collect()
            };
            let _ = parts[p].set(out);
        }
    });
    let mut out = Vec::with_capacity(gs.len());
    for part in parts {
        out.extend(part.into_inner().context("gated: a part did not run")?);
    }
    Ok(Tensor::from_vec(out, g.dims(), g.device())?)
}

/// Whether [`CausalLm::forward_cached`] attends in one fused pass (attend.rs): on the CPU in F32;
/// candle's ops elsewhere.
fn fused_attention(model: &CausalLm) -> bool {
    crate::fused::supported(&model.inv_freq) && model.dtype() == DType::F32
}

impl CausalLm {
    /// Run the next columns `input_ids` (`[b, s]`, u32; padding columns first when the cache
    /// is empty) through the model, appending their keys and values to `cache`. Returns the
    /// logits of the last column, `[b, vocab]` in F32 on the model's device. No autograd graph is
    /// recorded.
    pub fn forward_cached(&self, input_ids: &Tensor, cache: &mut KvCache) -> Result<Tensor> {
        let logits = self.forward_cached_host(input_ids, cache)?;
        let b = input_ids.dim(0)?;
        let vocab = logits.len() / b.max(1);
        Ok(Tensor::from_vec(logits, (b, vocab), self.device())?)
    }

    /// [`Self::forward_cached`] with the logits row-major in host memory, where the generation
    /// loop samples from them.
    pub fn forward_cached_host(&self, input_ids: &Tensor, cache: &mut KvCache) -> Result<Vec<f32>> {
        let c = &self.config;
        let (b, s) = input_ids.dims2()?;
        if s == 0 {
            bail!("forward_cached: no input columns");
        }
        if b != cache.batch() {
            bail!("forward_cached: {b} rows for a cache of {}", cache.batch());
        }
        if cache.len + s > cache.capacity {
            bail!(
                "forward_cached: {} columns exceed the cache capacity {}",
                cache.len + s,
                cache.capacity
            );
        }
        let (nh, nkv, hd) = (c.num_attention_heads, c.num_key_value_heads, c.head_dim);
        let n_rep = nh / nkv;
        let dev = self.device().clone();
        let dtype = self.dtype();

        let pos = Tensor::from_vec(cache.positions(s), (b, s, 1), &dev)?;
        let freqs = pos.broadcast_mul(&self.inv_freq)?;
        let cos = freqs.cos()?.to_dtype(dtype)?.contiguous()?;
        let sin = freqs.sin()?.to_dtype(dtype)?.contiguous()?;
        let fused = fused_attention(self);
        let mask = if fused {
            None
        } else {
            Some(cache.mask(s, dtype, &dev)?)
        };
        // The fused path reads the tables on the host (it runs on the CPU in F32).
        let (cos_host, sin_host) = (CpuF32::new(&cos), CpuF32::new(&sin));
        let rope = if fused {
            attend::Rope {
                cos: cos_host.slice("rope cos")?,
                sin: sin_host.slice("rope sin")?,
            }
        } else {
            attend::Rope::default()
        };
        let scale = 1.0 / (hd as f64).sqrt();
        let eps = c.rms_norm_eps;
        let t = cache.len + s;

        let mut x = self.embed(&input_ids.detach())?;
        for (li, l) in self.layers.iter().enumerate() {
            if fused {
                cache.prefetch_column(li)?;
            }
            let hn = crate::ops::rms_norm(&x, &l.input_norm, eps)?;
            let [q, k, v] = infer_linears([&l.q, &l.k, &l.v], &hn)?;
            let y = match &mask {
                None => {
                    let (k, v) = cache.append_rotated(li, &k, &v, &rope)?;
                    let shape = attend::Shape {
                        b,
                        s,
                        len: cache.len,
                        nh,
                        nkv,
                        hd,
                    };
                    attend::cached_attention(&q, &rope, &k, &v, &cache.pad, &shape, scale as f32)?
                }
                Some(mask) => {
                    let heads = |y: Tensor, n: usize| -> Result<Tensor> {
                        Ok(y.reshape((b, s, n, hd))?.transpose(1, 2)?.contiguous()?)
                    };
                    let q = candle_nn::rotary_emb::rope(&heads(q, nh)?, &cos, &sin)?;
                    let k = candle_nn::rotary_emb::rope(&heads(k, nkv)?, &cos, &sin)?;
                    let (k, v) = cache.append(li, &k, &heads(v, nkv)?)?;
                    // Grouped-query attention without repeating k/v: the n_rep query heads
                    // that share a kv head become extra query rows of that head.
                    let q = q.reshape((b, nkv, n_rep * s, hd))?;
                    let att = (q.matmul(&k.t()?)? * scale)?
                        .reshape((b, nkv, n_rep, s, t))?
                        .broadcast_add(mask)?;
                    let att =
                        candle_nn::ops::softmax_last_dim(&att)?.reshape((b, nkv, n_rep * s, t))?;
                    att.matmul(&v)?
                        .reshape((b, nh, s, hd))?
                        .transpose(1, 2)?
                        .reshape((b, s, nh * hd))?
                }
            };
            x = (x + infer_linear(&l.o, &y)?)?;
            let hn = crate::ops::rms_norm(&x, &l.post_norm, eps)?;
            let h = match gated_tiles(&l.gate, &l.up, c.hidden_act, &hn)? {
                Some(h) => h,
                None => {
                    let [g, u] = infer_linears([&l.gate, &l.up], &hn)?;
                    gated(&g, &u, c.hidden_act)?
                }
            };
            x = (x + infer_linear(&l.down, &h)?)?;
        }
        cache.advance(s);
        let last = x.narrow(1, s - 1, 1)?.squeeze(1)?.contiguous()?;
        let hn = crate::ops::rms_norm(&last, &self.norm, eps)?;
        output_logits(self, &hn)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leaders_are_the_largest_in_order_with_ties_to_the_smaller_id() {
        let row = [1.0, 3.0, 3.0, 2.0, 5.0, f32::NAN, -1.0];
        assert_eq!(leaders(&row, 3), [4, 1, 2]);
        assert_eq!(leaders(&row, 10), [4, 1, 2, 3, 0, 6]);
        assert!(leaders(&row, 0).is_empty());
    }

    /// With more blocks than leaders (the floor in use): the ids of a full sort, ties and NaN
    /// included.
    #[test]
    fn leaders_past_the_floor_equal_a_full_sort() {
        // Repeating values (ties across blocks), a NaN every 97, a run of -inf.
        let row: Vec<f32> = (0..1000)
            .map(|i| match i {
                _ if i % 97 == 0 => f32::NAN,
                300..=340 => f32::NEG_INFINITY,
                _ => ((i * 37 % 101) as f32 * 0.7).sin() * 10.0,
            })
            .collect();
        let mut sorted: Vec<u32> = (0..row.len() as u32)
            .filter(|&i| !row[i as usize].is_nan())
            .collect();
        sorted.sort_by(|&a, &b| row[b as usize].total_cmp(&row[a as usize]).then(a.cmp(&b)));
        for k in [1, 5, 40, 62, 63, 64, 900, 2000] {
            let want = &sorted[..k.min(sorted.len())];
            assert_eq!(leaders(&row, k), want, "k {k}");
        }
    }

    /// The fused SiLU gate gives candle's `silu(g) · u` (several pool chunks: 3 × 1500 values).
    #[test]
    fn the_fused_gate_matches_candles_ops() -> Result<()> {
        let dev = Device::Cpu;
        let g = Tensor::arange(0f32, 4500.0, &dev)?
            .affine(0.01, -20.0)?
            .reshape((3, 1500))?;
        let u = g.sin()?;
        let want = (candle_nn::ops::silu(&g)? * &u)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let got = gated(&g, &u, candle_nn::Activation::Silu)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        // Equal within the vector exponential's rounding (simd.rs) where it runs.
        for (i, (a, b)) in got.iter().zip(&want).enumerate() {
            assert!((a - b).abs() <= 1e-6 * b.abs() + 1e-12, "{i}: {a} vs {b}");
        }
        let gelu = gated(&g, &u, candle_nn::Activation::GeluPytorchTanh)?;
        let want = (g.apply(&candle_nn::Activation::GeluPytorchTanh)? * &u)?;
        assert_eq!(gelu.to_vec2::<f32>()?, want.to_vec2::<f32>()?);
        Ok(())
    }

    /// Rescoring on tiles that hold the dense matrix's values gives the dense rescoring's bits.
    #[test]
    fn rescoring_on_exact_tiles_equals_the_dense_rows() -> Result<()> {
        use candle_core::quantized::{GgmlDType, QTensor};
        if !crate::vnni::available() {
            eprintln!("skipped: this CPU has no AVX-512 VNNI");
            return Ok(());
        }
        let dev = Device::Cpu;
        let (vocab, hidden) = (48, 64);
        let wave = |n: usize, phase: f32| (0..n).map(move |i| (i as f32 * 0.37 + phase).sin());
        let w = Tensor::from_iter(wave(vocab * hidden, 0.0), &dev)?.reshape((vocab, hidden))?;
        let q = QTensor::quantize(&w, GgmlDType::Q8_0)?;
        let tiles = crate::vnni::PackedQ8::from_q8_0(&q.data()?, vocab, hidden)?;
        let dense = q.dequantize(&dev)?;
        let hn = Tensor::from_iter(wave(3 * hidden, 1.0), &dev)?.reshape((3, hidden))?;
        let first: Vec<f32> = wave(3 * vocab, 2.0).collect();
        let (mut on_dense, mut on_tiles) = (first.clone(), first);
        rescore_leaders(&mut on_dense, &hn, &dense, None, 7)?;
        rescore_leaders(&mut on_tiles, &hn, &dense, Some(&tiles), 7)?;
        assert_eq!(on_dense, on_tiles);
        Ok(())
    }

    /// The k leaders of each row get the exact product; every other entry keeps the first pass.
    #[test]
    fn rescoring_replaces_each_rows_leaders_with_exact_logits() -> Result<()> {
        let dev = Device::Cpu;
        // 40 values a row: two 16-lane chunks of `dot` and a tail.
        let (vocab, hidden) = (40, 40);
        let wave = |n: usize, phase: f32| (0..n).map(move |i| (i as f32 * 0.37 + phase).sin());
        let w = Tensor::from_iter(wave(vocab * hidden, 0.0), &dev)?.reshape((vocab, hidden))?;
        let hn = Tensor::from_iter(wave(2 * hidden, 1.0), &dev)?.reshape((2, hidden))?;
        let exact = hn.matmul(&w.t()?)?;
        // A first pass off by a per-entry offset, small against the logits' spread.
        let noise: Vec<f32> = (0..2 * vocab)
            .map(|i| ((i * 7 % 11) as f32 - 5.5) * 1e-3)
            .collect();
        let approx = (&exact + Tensor::from_vec(noise, (2, vocab), &dev)?)?;
        let mut out = approx.flatten_all()?.to_vec1::<f32>()?;
        rescore_leaders(&mut out, &hn, &w, None, 5)?;
        let out: Vec<&[f32]> = out.chunks_exact(vocab).collect();
        let (exact, approx) = (exact.to_vec2::<f32>()?, approx.to_vec2::<f32>()?);
        for r in 0..2 {
            let mut order: Vec<usize> = (0..vocab).collect();
            order.sort_by(|&a, &b| approx[r][b].total_cmp(&approx[r][a]));
            for (rank, &i) in order.iter().enumerate() {
                let want = if rank < 5 { exact[r][i] } else { approx[r][i] };
                assert!((out[r][i] - want).abs() < 1e-5, "row {r} rank {rank}");
            }
            assert_ne!(
                approx[r][order[0]], exact[r][order[0]],
                "the noise changed the leader"
            );
        }
        Ok(())
    }
}
