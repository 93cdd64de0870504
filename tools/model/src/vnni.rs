//! Q8_0 weights times f32 rows on AVX-512 VNNI: the products of CPU decoding.
//!
//! Why not candle's VNNI kernel (`quantized::repack_x86`): it takes only rows of whole
//! 256-column superblocks (SmolLM2's 576 columns had to be zero-padded to 768, a third more
//! work and bytes), shares a weight tile among at most four input rows (batch 8 read every
//! tile twice), converts a block's scales per input row, and rounds the input to 8 bits with
//! scalar code (~10% of a batch-8 step in perf). Here a tile is 16 weight rows × 32 columns,
//! the Q8_0 block itself, so any multiple of 32 columns fits; up to eight input rows share each
//! tile read; and the input is rounded per 32-value block (finer than candle's 256) by a vector
//! loop.
//!
//! `vpdpbusd` multiplies unsigned by signed bytes, so the weights are stored offset by +128 and
//! each input block's `128 · Σ q` is subtracted from its integer sum (candle does the same).

#![allow(unsafe_code)]

use crate::generate::simd;
use anyhow::{Result, bail};
use candle_core::Tensor;

/// Weight rows per tile: one 512-bit register of i32 sums.
const ROWS: usize = 16;
/// Columns per tile: a Q8_0 block.
const COLS: usize = 32;
/// Tiles ahead of the one in use whose cache lines are requested, into L2 far ahead and into
/// L1 near: the hardware prefetcher alone left the loads waiting (examples/bench_vnni: time was
/// the sum of streaming and arithmetic), and one distance into L1 (16 tiles, which beat 4 and
/// 32 there) held each line in a fill buffer for the whole trip from memory. SmolLM2,
/// bench_generate, 2 threads, medians of 4 alternations, decode tok/s batch 1 / batch 8: L1 at
/// 16 171 / 676; L1 at 4 and L2 at 32 182 / 723 (2 and 32: 179 / 720; 4 and 24: 178 / 726;
/// 4 and 48: 182 / 714; 8 and 32: 175 / 713); none 160 / 609.
const PREFETCH_L1_TILES: usize = 4;
const PREFETCH_L2_TILES: usize = 32;
/// Input rows that share a tile read (registers: an integer and an f32 sum per row).
const MAX_ROWS_PER_PASS: usize = 8;
/// Integer sums per row at most ([`pass`]), and the registers they may take in all.
const MAX_CHAINS: usize = 4;
const CHAINS_REGISTERS: usize = 16;

/// 16 weight rows × 32 columns: `qs[g][r][j]` = column `4g + j` of row `r`, plus 128.
#[repr(C, align(64))]
#[derive(Clone)]
struct Tile {
    qs: [u8; COLS * ROWS],
    d: [f32; ROWS],
}

/// A `[n, k]` Q8_0 matrix in tiles: strip `s` (rows `16s..16s+16`) is `tiles[s·kb..(s+1)·kb]`.
pub struct PackedQ8 {
    n: usize,
    k: usize,
    tiles: Vec<Tile>,
}

impl std::fmt::Debug for PackedQ8 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PackedQ8({}x{})", self.n, self.k)
    }
}

/// Whether this CPU has the instructions the products use.
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512vnni")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether a `[n, k]` matrix fits the tiles.
pub fn fits(n: usize, k: usize) -> bool {
    n > 0 && k > 0 && n.is_multiple_of(ROWS) && k.is_multiple_of(COLS)
}

/// Bytes of one GGUF Q8_0 block: an f16 scale, then 32 signed values.
const Q8_0_BLOCK_BYTES: usize = 2 + COLS;

impl PackedQ8 {
    /// Tiles from a `[n, k]` matrix of Q8_0 blocks as GGUF stores them (row-major).
    pub fn from_q8_0(raw: &[u8], n: usize, k: usize) -> Result<Self> {
        if !fits(n, k) {
            bail!("Q8_0 tiles: a [{n}, {k}] matrix is not in whole 16×32 tiles");
        }
        let kb = k / COLS;
        if raw.len() != n * kb * Q8_0_BLOCK_BYTES {
            bail!(
                "Q8_0 tiles: {} bytes for a [{n}, {k}] matrix, not {}",
                raw.len(),
                n * kb * Q8_0_BLOCK_BYTES
            );
        }
        let blank = Tile {
            qs: [0; COLS * ROWS],
            d: [0.0; ROWS],
        };
        let mut tiles = vec![blank; n / ROWS * kb];
        for (i, tile) in tiles.iter_mut().enumerate() {
            let (strip, b) = (i / kb, i % kb);
            for r in 0..ROWS {
                let at = ((strip * ROWS + r) * kb + b) * Q8_0_BLOCK_BYTES;
                let block = &raw[at..at + Q8_0_BLOCK_BYTES];
                tile.d[r] = half::f16::from_le_bytes([block[0], block[1]]).to_f32();
                for (c, &q) in block[2..].iter().enumerate() {
                    let (g, j) = (c / 4, c % 4);
                    tile.qs[(g * ROWS + r) * 4 + j] = (q as i8 as i16 + 128) as u8;
                }
            }
        }
        Ok(Self { n, k, tiles })
    }

    /// `(rows, columns)` of the matrix.
    pub fn dims(&self) -> (usize, usize) {
        (self.n, self.k)
    }

    /// Row `i` of the matrix in `out` (`k` values): each weight times its block's step, which
    /// is candle's dequantization of the Q8_0 blocks the tiles were packed from, to the bit.
    pub fn row(&self, i: usize, out: &mut [f32]) {
        assert!(
            i < self.n && out.len() == self.k,
            "Q8_0 tiles: row {i} of {self:?}"
        );
        let kb = self.k / COLS;
        let (strip, r) = (i / ROWS, i % ROWS);
        let tiles = &self.tiles[strip * kb..(strip + 1) * kb];
        for (tile, out) in tiles.iter().zip(out.chunks_exact_mut(COLS)) {
            let d = tile.d[r];
            for (g, out) in out.chunks_exact_mut(4).enumerate() {
                let at = (g * ROWS + r) * 4;
                for (o, &q) in out.iter_mut().zip(&tile.qs[at..at + 4]) {
                    *o = (i32::from(q) - 128) as f32 * d;
                }
            }
        }
    }
}

/// Input rows rounded to 8 bits per 32-value block: the values four to a word (the unit
/// `vpdpbusd` broadcasts), and per block its step `d` and `-128 · Σ q` for the weights' offset.
/// Stored by pass ([`MAX_ROWS_PER_PASS`] rows, fewer in the last), then block, then word, then
/// row: what a pass reads for one tile is contiguous, at fixed offsets from one pointer.
/// Row-major, each row's words needed a pointer of its own, more than the registers hold at 8
/// rows (the loop reloaded them from the stack).
struct Quantized {
    m: usize,
    /// Blocks per row.
    kb: usize,
    words: Vec<i32>,
    /// `(d, -128 · Σ q)`.
    blocks: Vec<(f32, i32)>,
}

impl Quantized {
    /// Rows before row `r`'s pass, and the rows in that pass.
    fn pass(&self, r: usize) -> (usize, usize) {
        let first = r - r % MAX_ROWS_PER_PASS;
        (first, (self.m - first).min(MAX_ROWS_PER_PASS))
    }

    /// Index in `blocks` of row `r`'s block `b`.
    fn block(&self, r: usize, b: usize) -> usize {
        let (first, rows) = self.pass(r);
        first * self.kb + b * rows + (r - first)
    }

    /// Index in `words` of word `g` of row `r`'s block `b`.
    fn word(&self, r: usize, b: usize, g: usize) -> usize {
        let (first, rows) = self.pass(r);
        (first * self.kb + b * rows) * (COLS / 4) + g * rows + (r - first)
    }
}

/// `x W_i^T` for each matrix `W_i` (all `[n_i, k]`) and the `[m, k]` row-major `x`: the input
/// is rounded once, and all products share one parallel region on candle's CPU pool (the one
/// its own quantized products and [`crate::generate`]'s attention use). Returns `[m, n_i]`
/// row-major outputs. Each output comes from one tile strip's loop, so the values do not depend
/// on the thread count.
pub fn products(ws: &[&PackedQ8], x: &[f32], m: usize) -> Result<Vec<Vec<f32>>> {
    let Some(k) = ws.first().map(|w| w.k) else {
        return Ok(Vec::new());
    };
    if ws.iter().any(|w| w.k != k) || x.len() != m * k {
        bail!(
            "Q8_0 products: input {}x{k} for matrices {ws:?}",
            x.len() / k.max(1)
        );
    }
    if !available() {
        bail!("Q8_0 products need AVX-512 VNNI");
    }
    let a = quantize(x, m, k);
    // Written in full by the work items below, so not zeroed first (a 1.5 MB memset per batch-8
    // step for SmolLM2's output matrix).
    let mut outs: Vec<Vec<f32>> = ws.iter().map(|w| Vec::with_capacity(m * w.n)).collect();
    // Work items are strips, numbered through the matrices in order.
    let mut first = Vec::with_capacity(ws.len());
    let mut total = 0;
    for w in ws {
        first.push(total);
        total += w.n / ROWS;
    }
    let dsts: Vec<SendPtr> = outs.iter_mut().map(|o| SendPtr(o.as_mut_ptr())).collect();
    let bounds = runs(total);
    candle_core::utils::barrier_pool().execute_chunked(bounds.len() - 1, |group| {
        for item in bounds[group.start]..bounds[group.end] {
            let wi = first.partition_point(|&f| f <= item) - 1;
            let (w, strip) = (ws[wi], item - first[wi]);
            let kb = k / COLS;
            let tiles = &w.tiles[strip * kb..(strip + 1) * kb];
            // SAFETY: strip `strip` writes only columns 16·strip.. of each output row, so work
            // items never touch the same values; `outs` outlives the region.
            #[cfg(target_arch = "x86_64")]
            unsafe {
                strip_times(tiles, &a, m, dsts[wi].0.add(strip * ROWS), w.n)
            };
            #[cfg(not(target_arch = "x86_64"))]
            let _ = (tiles, &a, &dsts);
        }
    });
    for (out, w) in outs.iter_mut().zip(ws) {
        // SAFETY: the strips of `w` cover its n columns of all m rows, and every work item ran
        // (a panic in one propagates out of `execute_chunked` before this point).
        unsafe { out.set_len(m * w.n) };
    }
    Ok(outs)
}

/// Bounds of the runs of consecutive strips that [`products`] and [`gated_products`] hand out
/// for `total` strips: long first and then shorter, each half a thread's share of what is left,
/// rather than candle's ~8 equal grabs per thread. Each run is one sequential stream of tiles,
/// which the prefetchers (ours and the hardware's) keep ahead of, and the short ones at the end
/// let the threads finish together. SmolLM2, 2 threads, bench_generate, decode tok/s (medians of
/// 4 alternations), equal runs per thread: ~8 runs 173 (batch 1) and 661 (batch 8); 4 runs
/// 183 / 683; 2 runs 189 / 696; 1 run 188 / 691; one strip at a time, threads alternating,
/// 124 / 539. These decreasing runs against 2 equal runs a thread, two rounds of 5
/// alternations: 196 / 734 vs 196 / 707, then 171 / 694 vs 179 / 693.
fn runs(total: usize) -> Vec<usize> {
    let threads = candle_core::utils::barrier_pool().n_workers() + 1;
    let mut bounds = vec![0];
    while let Some(&at) = bounds.last().filter(|&&at| at < total) {
        bounds.push(at + ((total - at) / (2 * threads)).max(1));
    }
    bounds
}

/// `silu(x G^T) · (x U^T)`, the gated hidden state of a SiLU MLP, for the `[m, k]` row-major `x`
/// and `[n, k]` matrices `G` and `U`: `[m, n]` row-major. A work item multiplies a strip of
/// both and gates its 16 columns of every row at once, while they are in registers' reach,
/// rather than the products writing both `[m, n]` outputs for a separate pass to read back
/// (half of them from the other core's cache). The same values as [`products`] then
/// [`simd::silu_gate`]. `None` where the CPU lacks the vector exponential's instructions.
pub fn gated_products(g: &PackedQ8, u: &PackedQ8, x: &[f32], m: usize) -> Result<Option<Vec<f32>>> {
    let (n, k) = (g.n, g.k);
    if u.n != n || u.k != k || x.len() != m * k {
        bail!(
            "gated Q8_0 products: input {}x{k} for {g:?} and {u:?}",
            x.len() / k.max(1)
        );
    }
    if !available() || !simd::supported(16) {
        return Ok(None);
    }
    let a = quantize(x, m, k);
    let mut out: Vec<f32> = Vec::with_capacity(m * n);
    let dst = SendPtr(out.as_mut_ptr());
    let strips = n / ROWS;
    let bounds = runs(strips);
    let kb = k / COLS;
    candle_core::utils::barrier_pool().execute_chunked(bounds.len() - 1, |group| {
        // The whole wrapper, not its raw pointer field (closures capture fields).
        let dst = &dst;
        let (mut gs, mut us, mut hs) = (
            vec![0f32; m * ROWS],
            vec![0f32; m * ROWS],
            vec![0f32; m * ROWS],
        );
        for strip in bounds[group.start]..bounds[group.end] {
            let tiles = strip * kb..(strip + 1) * kb;
            // SAFETY: the buffers hold m rows of 16 (ld 16); the CPU was checked.
            #[cfg(target_arch = "x86_64")]
            unsafe {
                strip_times(&g.tiles[tiles.clone()], &a, m, gs.as_mut_ptr(), ROWS);
                strip_times(&u.tiles[tiles], &a, m, us.as_mut_ptr(), ROWS);
            }
            #[cfg(not(target_arch = "x86_64"))]
            let _ = tiles;
            simd::silu_gate(&gs, &us, &mut hs);
            for (r, h) in hs.chunks_exact(ROWS).enumerate() {
                // SAFETY: strip `strip` writes only columns 16·strip.. of each row, so work
                // items never touch the same values; `out` holds m·n.
                unsafe {
                    std::ptr::copy_nonoverlapping(h.as_ptr(), dst.0.add(r * n + strip * ROWS), ROWS)
                };
            }
        }
    });
    // SAFETY: the strips cover all n columns of the m rows, and every work item ran.
    unsafe { out.set_len(m * n) };
    Ok(Some(out))
}

/// [`products`] on a `[rows, k]` tensor (any float dtype, on the CPU): `[rows, n_i]` tensors
/// in `x`'s dtype.
pub fn tensor_products<const N: usize>(ws: [&PackedQ8; N], x: &Tensor) -> Result<[Tensor; N]> {
    let rows = x.dim(0)?;
    let ys = host_products(&ws, x)?
        .into_iter()
        .zip(ws)
        .map(|(y, w)| Ok(Tensor::from_vec(y, (rows, w.n), x.device())?.to_dtype(x.dtype())?))
        .collect::<Result<Vec<_>>>()?;
    ys.try_into()
        .map_err(|_| anyhow::anyhow!("Q8_0 products: output count"))
}

/// [`products`] on a `[rows, k]` tensor, the outputs left as F32 row-major vectors.
pub fn host_products(ws: &[&PackedQ8], x: &Tensor) -> Result<Vec<Vec<f32>>> {
    let (rows, _) = x.dims2()?;
    products(ws, &crate::fused::f32_vec(x)?, rows)
}

/// An output pointer handed to the pool's threads, which write disjoint parts of it.
#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: see the use in `products`: each work item writes its own columns.
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

/// Rows of `x` rounded per 32-value block to `d · q`, `q` in -127..=127, `d` = largest |value| / 127.
fn quantize(x: &[f32], m: usize, k: usize) -> Quantized {
    let kb = k / COLS;
    let mut a = Quantized {
        m,
        kb,
        words: vec![0; m * k / 4],
        blocks: vec![(0.0, 0); m * kb],
    };
    let mut words = [0i32; COLS / 4];
    for (r, row) in x.chunks_exact(k).enumerate() {
        // Block b of this row is at `at + b · rows`, its word g at `word + (b · 8 + g) · rows`.
        let (at, word, rows) = (a.block(r, 0), a.word(r, 0, 0), a.pass(r).1);
        for (b, block) in row.chunks_exact(COLS).enumerate() {
            #[cfg(target_arch = "x86_64")]
            {
                // SAFETY: `products` checked the CPU; both slices hold 32 values.
                a.blocks[at + b * rows] = unsafe { quantize_block(block, &mut words) };
            }
            #[cfg(not(target_arch = "x86_64"))]
            let _ = block;
            for (g, &w) in words.iter().enumerate() {
                a.words[word + (b * COLS / 4 + g) * rows] = w;
            }
        }
    }
    a
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn quantize_block(x: &[f32], qs: &mut [i32]) -> (f32, i32) {
    use std::arch::x86_64::*;
    debug_assert!(x.len() == COLS && qs.len() == COLS / 4);
    let v0 = unsafe { _mm512_loadu_ps(x.as_ptr()) };
    let v1 = unsafe { _mm512_loadu_ps(x.as_ptr().add(16)) };
    let amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(v0), _mm512_abs_ps(v1)));
    // NaN or infinity anywhere: a NaN step, so the products say so instead of rounding it away.
    // (A lane pair compares unordered where either is NaN; `vmaxps` may drop a NaN, not an
    // infinity.)
    if _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(v0, v1) != 0 || amax == f32::INFINITY {
        return (f32::NAN, 0);
    }
    let scale = if amax > 0.0 { 127.0 / amax } else { 0.0 };
    // Round to nearest (MXCSR's default), as the float product's error bound assumes.
    let q0 = _mm512_cvtps_epi32(_mm512_mul_ps(v0, _mm512_set1_ps(scale)));
    let q1 = _mm512_cvtps_epi32(_mm512_mul_ps(v1, _mm512_set1_ps(scale)));
    unsafe {
        _mm_storeu_si128(qs.as_mut_ptr().cast(), _mm512_cvtsepi32_epi8(q0));
        _mm_storeu_si128(qs.as_mut_ptr().add(4).cast(), _mm512_cvtsepi32_epi8(q1));
    }
    let sum = _mm512_reduce_add_epi32(_mm512_add_epi32(q0, q1));
    (amax / 127.0, -128 * sum)
}

/// One strip (16 weight rows) times all `m` input rows, `MAX_ROWS_PER_PASS` at a time; row `r`'s
/// 16 outputs go to `dst[r·ld..]`.
///
/// # Safety
/// The CPU has AVX-512 F/BW/VNNI; `dst` is valid for rows `0..m` of `ld` values from it, 16 each.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn strip_times(tiles: &[Tile], a: &Quantized, m: usize, dst: *mut f32, ld: usize) {
    let mut r0 = 0;
    while r0 < m {
        let rows = (m - r0).min(MAX_ROWS_PER_PASS);
        // SAFETY: as the caller's; rows r0..r0+rows exist.
        unsafe {
            match rows {
                8 => pass::<8>(tiles, a, r0, dst, ld),
                7 => pass::<7>(tiles, a, r0, dst, ld),
                6 => pass::<6>(tiles, a, r0, dst, ld),
                5 => pass::<5>(tiles, a, r0, dst, ld),
                4 => pass::<4>(tiles, a, r0, dst, ld),
                3 => pass::<3>(tiles, a, r0, dst, ld),
                2 => pass::<2>(tiles, a, r0, dst, ld),
                _ => pass::<1>(tiles, a, r0, dst, ld),
            }
        }
        r0 += rows;
    }
}

/// Input rows `r0..r0 + M` times one strip.
///
/// # Safety
/// As [`strip_times`], for rows `r0..r0 + M`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
#[inline]
unsafe fn pass<const M: usize>(tiles: &[Tile], a: &Quantized, r0: usize, dst: *mut f32, ld: usize) {
    use std::arch::x86_64::*;
    debug_assert!(a.pass(r0) == (r0, M) && tiles.len() == a.kb);
    let mut acc = [_mm512_setzero_ps(); M];
    for (b, tile) in tiles.iter().enumerate() {
        let (near, far) = (
            (tile as *const Tile)
                .wrapping_add(PREFETCH_L1_TILES)
                .cast::<i8>(),
            (tile as *const Tile)
                .wrapping_add(PREFETCH_L2_TILES)
                .cast::<i8>(),
        );
        for line in 0..size_of::<Tile>() / 64 {
            _mm_prefetch::<_MM_HINT_T0>(near.wrapping_add(line * 64));
            _mm_prefetch::<_MM_HINT_T1>(far.wrapping_add(line * 64));
        }
        // Several integer sums per row (column groups g, g + chains, ...), so that a row's
        // `vpdpbusd`s are not one chain of 8 dependent instructions: out-of-order execution did
        // not hide that latency even across 8 rows (examples/bench_vnni, weights in cache, 8
        // rows: 50 µs with one chain, 31 with two). As many as the registers hold.
        let chains = (CHAINS_REGISTERS / M).clamp(1, MAX_CHAINS);
        // The first chain starts at minus the input block's offset term, which saves a
        // subtraction per row and tile.
        // SAFETY: rows r0..r0 + M exist (the caller's), the pass of M rows from r0, and
        // b < kb: the pass's entries for block b, M per word and per block.
        let (words, blocks) = unsafe {
            (
                a.words.as_ptr().add(a.word(r0, b, 0)),
                a.blocks.as_ptr().add(a.block(r0, b)),
            )
        };
        let mut sums = [[_mm512_setzero_si512(); M]; MAX_CHAINS];
        for (i, sum) in sums[0].iter_mut().enumerate() {
            // SAFETY: as above, i < M.
            *sum = _mm512_set1_epi32(unsafe { (*blocks.add(i)).1 });
        }
        for g in 0..COLS / 4 {
            // SAFETY: a tile holds 8 groups of 64 bytes, 64-aligned.
            let w = unsafe { _mm512_load_si512(tile.qs.as_ptr().add(g * 64).cast()) };
            let sum = &mut sums[g % chains];
            for (i, sum) in sum.iter_mut().enumerate() {
                // SAFETY: as above, g < COLS / 4 and i < M.
                let x = unsafe { *words.add(g * M + i) };
                *sum = _mm512_dpbusd_epi32(*sum, w, _mm512_set1_epi32(x));
            }
        }
        let dw = unsafe { _mm512_load_ps(tile.d.as_ptr()) };
        for i in 0..M {
            // SAFETY: as above.
            let d = unsafe { (*blocks.add(i)).0 };
            let sum = sums[1..chains]
                .iter()
                .fold(sums[0][i], |s, c| _mm512_add_epi32(s, c[i]));
            let step = _mm512_mul_ps(dw, _mm512_set1_ps(d));
            acc[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum), step, acc[i]);
        }
    }
    for (i, v) in acc.iter().enumerate() {
        // SAFETY: the caller's: row r0 + i has 16 values at dst + (r0 + i)·ld.
        unsafe { _mm512_storeu_ps(dst.add((r0 + i) * ld), *v) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use candle_core::quantized::{GgmlDType, QTensor};

    /// The products equal the dequantized weights times the input rounded the same way, for
    /// every row count a pass handles (1..8, then 8 + a remainder) and several matrices at once.
    #[test]
    fn products_match_dequantized_weights() -> Result<()> {
        if !available() {
            eprintln!("skipped: this CPU has no AVX-512 VNNI");
            return Ok(());
        }
        let dev = Device::Cpu;
        let (k, ns) = (96, [32usize, 48]);
        let wave = |len: usize, f: f32| (0..len).map(move |i| ((i as f32) * f).sin() * 0.8);
        let mats = ns
            .iter()
            .enumerate()
            .map(|(j, &n)| {
                let w = Tensor::from_iter(wave(n * k, 0.37 + j as f32), &dev)?.reshape((n, k))?;
                let q = QTensor::quantize(&w, GgmlDType::Q8_0)?;
                let packed = PackedQ8::from_q8_0(&q.data()?, n, k)?;
                Ok((packed, q.dequantize(&dev)?.to_vec2::<f32>()?))
            })
            .collect::<Result<Vec<_>>>()?;
        for m in [1, 2, 3, 5, 8, 11] {
            let x: Vec<f32> = wave(m * k, 0.11).map(|v| v * 3.0 - 0.5).collect();
            // The reference rounds the input exactly as `quantize` does.
            let a = quantize(&x, m, k);
            // Row-major: value c of row r.
            let qs: Vec<i8> = (0..m * k)
                .map(|i| {
                    let (r, c) = (i / k, i % k);
                    let word = a.words[a.word(r, c / COLS, c % COLS / 4)];
                    word.to_le_bytes()[c % 4] as i8
                })
                .collect();
            let step = |i: usize| a.blocks[a.block(i / k, i % k / COLS)].0;
            let xr: Vec<f32> = qs
                .iter()
                .enumerate()
                .map(|(i, &q)| q as f32 * step(i))
                .collect();
            let ws: Vec<&PackedQ8> = mats.iter().map(|(p, _)| p).collect();
            let outs = products(&ws, &x, m)?;
            for ((_, w), out) in mats.iter().zip(&outs) {
                for r in 0..m {
                    for (o, wrow) in w.iter().enumerate() {
                        let want: f32 = (0..k).map(|c| xr[r * k + c] * wrow[c]).sum();
                        let got = out[r * w.len() + o];
                        assert!(
                            (got - want).abs() < 1e-4,
                            "m {m} row {r} out {o}: {got} vs {want}"
                        );
                    }
                }
            }
            // Rounding to 8 bits per block stays within half a step of each value.
            for (i, (&q, &v)) in qs.iter().zip(&x).enumerate() {
                let d = step(i);
                assert!((q as f32 * d - v).abs() <= d * 0.5 + 1e-6);
            }
        }
        Ok(())
    }

    /// A row read back from the tiles is candle's dequantization of the same blocks, to the bit.
    #[test]
    fn rows_read_from_tiles_equal_candles_dequantization() -> Result<()> {
        let dev = Device::Cpu;
        let (n, k) = (48, 96);
        let w = Tensor::from_iter((0..n * k).map(|i| (i as f32 * 0.29).sin() * 3.0), &dev)?;
        let q = QTensor::quantize(&w.reshape((n, k))?, GgmlDType::Q8_0)?;
        let packed = PackedQ8::from_q8_0(&q.data()?, n, k)?;
        let dense = q.dequantize(&dev)?.to_vec2::<f32>()?;
        let mut row = vec![0f32; k];
        for (i, want) in dense.iter().enumerate() {
            packed.row(i, &mut row);
            assert_eq!(&row, want, "row {i}");
        }
        Ok(())
    }

    /// The gated products equal the two products gated afterwards, to the bit, for one pass,
    /// a partial one and more than one.
    #[test]
    fn gated_products_equal_products_then_the_gate() -> Result<()> {
        if !available() || !simd::supported(16) {
            eprintln!("skipped: this CPU has no AVX-512 VNNI");
            return Ok(());
        }
        let dev = Device::Cpu;
        let (n, k) = (48, 64);
        let pack = |f: f32| -> Result<PackedQ8> {
            let w = Tensor::from_iter((0..n * k).map(|i| (i as f32 * f).sin()), &dev)?;
            let q = QTensor::quantize(&w.reshape((n, k))?, GgmlDType::Q8_0)?;
            PackedQ8::from_q8_0(&q.data()?, n, k)
        };
        let (g, u) = (pack(0.31)?, pack(0.77)?);
        for m in [1, 3, 8, 11] {
            let x: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.13).cos() * 2.0).collect();
            let Some(got) = gated_products(&g, &u, &x, m)? else {
                bail!("gated products declined on a CPU that has the instructions");
            };
            let ys = products(&[&g, &u], &x, m)?;
            let mut want = vec![0f32; m * n];
            simd::silu_gate(&ys[0], &ys[1], &mut want);
            assert_eq!(got, want, "{m} rows");
        }
        Ok(())
    }

    /// A NaN or an infinity in the input makes its rows' outputs NaN, not a rounded value.
    #[test]
    fn non_finite_inputs_give_nan() -> Result<()> {
        if !available() {
            eprintln!("skipped: this CPU has no AVX-512 VNNI");
            return Ok(());
        }
        let (n, k) = (16, 64);
        let w = candle_core::Tensor::ones((n, k), candle_core::DType::F32, &Device::Cpu)?;
        let q = QTensor::quantize(&w, GgmlDType::Q8_0)?;
        let packed = PackedQ8::from_q8_0(&q.data()?, n, k)?;
        for bad in [f32::NAN, f32::INFINITY] {
            let mut x = vec![0.5f32; 2 * k];
            x[k + 40] = bad;
            let out = &products(&[&packed], &x, 2)?[0];
            assert!(out[..n].iter().all(|v| (v - 32.0).abs() < 0.1), "{out:?}");
            assert!(out[n..].iter().all(|v| v.is_nan()), "{bad}: {out:?}");
        }
        Ok(())
    }

    #[test]
    fn shapes_outside_whole_tiles_are_refused() {
        assert!(!fits(24, 64) && !fits(32, 48) && fits(32, 64));
        assert!(PackedQ8::from_q8_0(&[0; 34], 16, 32).is_err());
    }
}
