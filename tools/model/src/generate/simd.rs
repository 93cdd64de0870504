//! AVX-512 kernels of decoding on the CPU in F32: the two products of attention for one (row,
//! key/value head) item over an f32 or f16 KV cache, its softmax, and the MLP's SiLU gate.
//!
//! Why not gemm for attention (as prefill does): with 3 query rows per item (SmolLM2's 9 heads
//! over 3 KV heads) its packing and dispatch cost more than the arithmetic; at batch 8 the
//! attention was ~20% of a decoding step in perf, 720 items of two calls each. Here the keys are
//! read in place: each score is a dot product kept as a vector of 16 partial sums, and 16 keys'
//! vectors are summed across lanes together (45 shuffles and adds for 16 scores); the values are
//! added up row-major, a broadcast weight times each value row. The exponentials of the softmax
//! and the gate are a polynomial on 16 lanes instead of a libm call per value.

#![allow(unsafe_code)]

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// Floats per register.
const LANES: usize = 16;

/// The largest head size the kernels take ([`supported`]).
const MAX_HEAD: usize = 128;

/// A value type of the KV cache: f32, or f16 where the weights are blocks (see
/// [`super::cache::KvCache`]).
pub(super) trait CacheValue: Copy + Default + Into<f32> {
    /// `v` rounded to this type (to nearest, as candle's `to_dtype`).
    fn from_f32(v: f32) -> Self;

    /// The values as f32, for gemm (prefill).
    fn as_f32(values: &[Self]) -> std::borrow::Cow<'_, [f32]> {
        values
            .iter()
            .map(|&v| v.into())
            .collect::<Vec<f32>>()
            .into()
    }

    /// 16 values from `p` as f32.
    ///
    /// # Safety
    /// AVX-512F; `p` valid for 16 values.
    #[cfg(target_arch = "x86_64")]
    unsafe fn load(p: *const Self) -> __m512;

    /// 16 values stored at `p`, rounded as [`Self::from_f32`] rounds them.
    ///
    /// # Safety
    /// AVX-512F; `p` valid for writing 16 values.
    #[cfg(target_arch = "x86_64")]
    unsafe fn store(p: *mut Self, v: __m512);
}

impl CacheValue for f32 {
    fn from_f32(v: f32) -> Self {
        v
    }

    fn as_f32(values: &[Self]) -> std::borrow::Cow<'_, [f32]> {
        values.into()
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load(p: *const Self) -> __m512 {
        // SAFETY: the caller's.
        unsafe { _mm512_loadu_ps(p) }
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn store(p: *mut Self, v: __m512) {
        // SAFETY: the caller's.
        unsafe { _mm512_storeu_ps(p, v) }
    }
}

impl CacheValue for half::f16 {
    fn from_f32(v: f32) -> Self {
        half::f16::from_f32(v)
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load(p: *const Self) -> __m512 {
        // SAFETY: the caller's (`vcvtph2ps` on 512 bits is AVX-512F).
        unsafe { _mm512_cvtph_ps(_mm256_loadu_si256(p.cast())) }
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn store(p: *mut Self, v: __m512) {
        // Round to nearest even, as `half::f16::from_f32` (whose F16C path is this instruction).
        // SAFETY: the caller's.
        unsafe {
            let h = _mm512_cvtps_ph::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(v);
            _mm256_storeu_si256(p.cast(), h)
        }
    }
}

/// Whether [`scores`] and [`weighted_values`] run for heads of `hd` values on this CPU.
pub(crate) fn supported(hd: usize) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        matches!(hd, 16 | 32 | 64 | 128) && std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = hd;
        false
    }
}

/// Whether [`write_head`] takes heads of `hd` values (whole registers per half).
pub(super) fn write_head_supported(hd: usize) -> bool {
    supported(hd) && hd.is_multiple_of(2 * LANES)
}

/// One head `x` written to `out` in the cache's type, rotated by its column's rope tables
/// `(cos, sin)` (one value per pair of halves) where given: the scalar loop of
/// [`super::attend::write_head`] on 16 lanes, the same operations in the same order.
pub(super) fn write_head<T: CacheValue>(x: &[f32], rot: Option<(&[f32], &[f32])>, out: &mut [T]) {
    let half = x.len() / 2;
    assert!(
        write_head_supported(x.len())
            && out.len() == x.len()
            && rot.is_none_or(|(c, s)| c.len() == half && s.len() == half)
    );
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `write_head_supported` checked the CPU and that the halves are whole registers.
    unsafe {
        write_head_simd(x, rot, out)
    }
}

/// # Safety
/// AVX-512F; as [`write_head`]'s assertion.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn write_head_simd<T: CacheValue>(x: &[f32], rot: Option<(&[f32], &[f32])>, out: &mut [T]) {
    let half = x.len() / 2;
    let (xp, op) = (x.as_ptr(), out.as_mut_ptr());
    // SAFETY (all blocks): offsets below x.len() in whole registers; tables of `half` values.
    match rot {
        None => {
            for at in (0..x.len()).step_by(LANES) {
                unsafe { T::store(op.add(at), _mm512_loadu_ps(xp.add(at))) };
            }
        }
        Some((cos, sin)) => {
            for at in (0..half).step_by(LANES) {
                unsafe {
                    let (x1, x2) = (
                        _mm512_loadu_ps(xp.add(at)),
                        _mm512_loadu_ps(xp.add(half + at)),
                    );
                    let c = _mm512_loadu_ps(cos.as_ptr().add(at));
                    let s = _mm512_loadu_ps(sin.as_ptr().add(at));
                    let o1 = _mm512_sub_ps(_mm512_mul_ps(x1, c), _mm512_mul_ps(x2, s));
                    let o2 = _mm512_add_ps(_mm512_mul_ps(x1, s), _mm512_mul_ps(x2, c));
                    T::store(op.add(at), o1);
                    T::store(op.add(half + at), o2);
                }
            }
        }
    }
}

/// Asks for the cache lines of `values` ahead of writing them: each decoding step writes one
/// new column of every layer's cache, whose lines are cold (at batch 8 waiting for them was half
/// of the cache writes' time).
pub(super) fn prefetch<T>(values: &[T]) {
    #[cfg(target_arch = "x86_64")]
    prefetch_lines::<_MM_HINT_T0, T>(values);
    #[cfg(not(target_arch = "x86_64"))]
    let _ = values;
}

/// Asks for the cache lines of `values` into L2 only (into L1 the requests would hold the fill
/// buffers that the loads in between wait for): the rows of the logits to rescore.
pub(super) fn prefetch_l2<T>(values: &[T]) {
    #[cfg(target_arch = "x86_64")]
    prefetch_lines::<_MM_HINT_T1, T>(values);
    #[cfg(not(target_arch = "x86_64"))]
    let _ = values;
}

#[cfg(target_arch = "x86_64")]
fn prefetch_lines<const HINT: i32, T>(values: &[T]) {
    for line in (0..size_of_val(values)).step_by(64) {
        // SAFETY: SSE is part of x86_64; a prefetch reads nothing the program sees.
        unsafe { _mm_prefetch::<HINT>(values.as_ptr().cast::<i8>().wrapping_add(line)) };
    }
}

/// `out[r·t + j] = q_r · k_j` for the `rows` rows of `q` (`[rows, hd]`) and the `t` rows of `k`
/// (`[t, hd]`), all row-major. Panics unless [`supported`]`(hd)` and the lengths fit.
pub(super) fn scores<T: CacheValue>(q: &[f32], k: &[T], hd: usize, out: &mut [f32]) {
    let (rows, t) = (q.len() / hd, k.len() / hd);
    assert!(supported(hd) && q.len() == rows * hd && k.len() == t * hd && out.len() == rows * t);
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `supported` checked the CPU; the lengths were checked above.
    unsafe {
        match hd {
            16 => scores_simd::<T, 1>(q, k, out),
            32 => scores_simd::<T, 2>(q, k, out),
            64 => scores_simd::<T, 4>(q, k, out),
            _ => scores_simd::<T, 8>(q, k, out),
        }
    }
}

/// `out[r] = Σ_j p[r·t + j] · v_j` for `p` `[rows, t]` and `v` `[t, hd]`, row-major; `out`
/// `[rows, hd]`. Panics unless [`supported`]`(hd)` and the lengths fit.
pub(super) fn weighted_values<T: CacheValue>(p: &[f32], v: &[T], hd: usize, out: &mut [f32]) {
    let t = v.len() / hd;
    let rows = out.len() / hd;
    assert!(supported(hd) && v.len() == t * hd && out.len() == rows * hd && p.len() == rows * t);
    #[cfg(target_arch = "x86_64")]
    // SAFETY: as in `scores`.
    unsafe {
        match hd {
            16 => weighted_rows::<T, 1>(p, v, out),
            32 => weighted_rows::<T, 2>(p, v, out),
            64 => weighted_rows::<T, 4>(p, v, out),
            _ => weighted_rows::<T, 8>(p, v, out),
        }
    }
}

/// `y = softmax(scale · x)` for one row of scores (`x` and `y` the same length, ≥ 1), the
/// exponential by a polynomial on 16 lanes (Cephes' `expf`), within 1e-6 relative of
/// [`crate::fused::softmax_row`], whose libm call per value was ~5% of a batch-8 step (perf,
/// SmolLM2). A row whose scores are all -inf gets weights 0, as there. Panics unless
/// [`supported`] for some size.
pub(super) fn softmax(x: &[f32], y: &mut [f32], scale: f32) {
    assert!(x.len() == y.len() && !x.is_empty() && supported(16));
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `supported` checked the CPU.
    unsafe {
        softmax_simd(x, y, scale)
    }
}

/// The tail mask of the 16-value chunk at `at` of a slice of `len` values.
fn chunk_mask(at: usize, len: usize) -> u16 {
    let n = (len - at).min(LANES);
    if n == LANES { !0 } else { (1u16 << n) - 1 }
}

/// # Safety
/// AVX-512F; `x` and `y` of one length.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn softmax_simd(x: &[f32], y: &mut [f32], scale: f32) {
    let len = x.len();
    let sc = _mm512_set1_ps(scale);
    let mut max = _mm512_set1_ps(f32::NEG_INFINITY);
    for at in (0..len).step_by(LANES) {
        let m = chunk_mask(at, len);
        // SAFETY: the mask reads only values at..len.
        let v = unsafe { _mm512_maskz_loadu_ps(m, x.as_ptr().add(at)) };
        max = _mm512_mask_max_ps(max, m, max, _mm512_mul_ps(v, sc));
    }
    let max = _mm512_reduce_max_ps(max);
    if max == f32::NEG_INFINITY {
        y.fill(0.0);
        return;
    }
    let mut sum = _mm512_setzero_ps();
    for at in (0..len).step_by(LANES) {
        let m = chunk_mask(at, len);
        // SAFETY: as above, for x and y.
        unsafe {
            let v = _mm512_maskz_loadu_ps(m, x.as_ptr().add(at));
            // Rounded as softmax_row does: the scaled score, then the difference.
            let e = exp(_mm512_sub_ps(_mm512_mul_ps(v, sc), _mm512_set1_ps(max)));
            let e = _mm512_maskz_mov_ps(m, e);
            sum = _mm512_add_ps(sum, e);
            _mm512_mask_storeu_ps(y.as_mut_ptr().add(at), m, e);
        }
    }
    let inv = _mm512_set1_ps(1.0 / _mm512_reduce_add_ps(sum));
    for at in (0..len).step_by(LANES) {
        let m = chunk_mask(at, len);
        // SAFETY: as above.
        unsafe {
            let p = y.as_mut_ptr().add(at);
            _mm512_mask_storeu_ps(p, m, _mm512_mul_ps(_mm512_maskz_loadu_ps(m, p), inv));
        }
    }
}

/// `e^x` on 16 lanes (-inf gives 0, +inf and overflow inf, NaN NaN): Cephes' `expf`,
/// `x = n ln 2 + r` with `|r| ≤ ln 2 / 2`, a degree-7 polynomial in `r`, then `2^n` by
/// `vscalefps`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn exp(x: __m512) -> __m512 {
    // Below this e^x is under f32's smallest subnormal; clamping keeps -inf out of the reduction
    // (`vmaxps` returns its second operand, x, where x is NaN).
    let x = _mm512_max_ps(_mm512_set1_ps(-104.0), x);
    let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
        _mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E)),
    );
    // ln 2 in two parts, so n·ln2 is exact in the first.
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693_359_4), x);
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.121_944_4e-4), r);
    let mut p = _mm512_set1_ps(1.987_569_1e-4);
    for c in [
        1.398_199_9e-3,
        8.333_452e-3,
        4.166_579_6e-2,
        0.166_666_65,
        0.5,
    ] {
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
    }
    let p = _mm512_fmadd_ps(
        p,
        _mm512_mul_ps(r, r),
        _mm512_add_ps(r, _mm512_set1_ps(1.0)),
    );
    _mm512_scalef_ps(p, n)
}

/// `out = silu(g) · u = g / (1 + e^-g) · u`, candle's SiLU formula, for slices of one length.
/// Panics unless [`supported`] for some size.
pub(crate) fn silu_gate(g: &[f32], u: &[f32], out: &mut [f32]) {
    assert!(g.len() == u.len() && g.len() == out.len() && supported(16));
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `supported` checked the CPU.
    unsafe {
        silu_gate_simd(g, u, out)
    }
}

/// # Safety
/// AVX-512F; the three slices of one length.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn silu_gate_simd(g: &[f32], u: &[f32], out: &mut [f32]) {
    let one = _mm512_set1_ps(1.0);
    for at in (0..g.len()).step_by(LANES) {
        let m = chunk_mask(at, g.len());
        // SAFETY: the mask touches only values at..len of each slice.
        unsafe {
            let gv = _mm512_maskz_loadu_ps(m, g.as_ptr().add(at));
            let uv = _mm512_maskz_loadu_ps(m, u.as_ptr().add(at));
            let e = exp(_mm512_sub_ps(_mm512_setzero_ps(), gv));
            let y = _mm512_mul_ps(_mm512_div_ps(gv, _mm512_add_ps(one, e)), uv);
            _mm512_mask_storeu_ps(out.as_mut_ptr().add(at), m, y);
        }
    }
}

/// [`scores`] for `hd = 16·C`.
///
/// # Safety
/// AVX-512F; the lengths as [`scores`] checks them.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn scores_simd<T: CacheValue, const C: usize>(q: &[f32], k: &[T], out: &mut [f32]) {
    let hd = C * LANES;
    let (rows, t) = (q.len() / hd, k.len() / hd);
    // Keys outside, rows inside: a block of 16 keys comes from memory once and from L1 for the
    // other rows.
    for j0 in (0..t).step_by(LANES) {
        let n = (t - j0).min(LANES);
        // A last block of fewer keys is copied after zeros so that every block has 16.
        let mut tail: [T; LANES * MAX_HEAD];
        let keys = if n == LANES {
            k[j0 * hd..].as_ptr()
        } else {
            tail = [T::default(); LANES * MAX_HEAD];
            let base = tail.as_mut_ptr();
            // SAFETY: keys j0..t are n·hd values of k; `tail` holds 16·hd.
            unsafe { std::ptr::copy_nonoverlapping(k.as_ptr().add(j0 * hd), base, n * hd) };
            base.cast_const()
        };
        for r in 0..rows {
            // SAFETY: row r has hd values.
            let qr: [__m512; C] = std::array::from_fn(|c| unsafe {
                _mm512_loadu_ps(q.as_ptr().add(r * hd + c * LANES))
            });
            // SAFETY: `keys` holds 16 keys of hd values.
            let sums = unsafe { block_scores::<T, C>(&qr, keys) };
            // SAFETY: the mask writes only the n scores of keys j0..j0 + n of row r.
            unsafe {
                _mm512_mask_storeu_ps(out.as_mut_ptr().add(r * t + j0), chunk_mask(j0, t), sums)
            };
        }
    }
}

/// The scores of one query row `q` against 16 consecutive keys of `16·C` values at `keys`.
///
/// # Safety
/// AVX-512F; `keys` valid for 16·16·C values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn block_scores<T: CacheValue, const C: usize>(q: &[__m512; C], keys: *const T) -> __m512 {
    let partial: [__m512; LANES] = std::array::from_fn(|j| {
        let mut acc = _mm512_setzero_ps();
        for (c, qc) in q.iter().enumerate() {
            // SAFETY: the caller's: key j < 16 has 16·C values.
            let kc = unsafe { T::load(keys.add((j * C + c) * LANES)) };
            acc = _mm512_fmadd_ps(*qc, kc, acc);
        }
        acc
    });
    sum_lanes(partial)
}

/// The lane sums of 16 vectors as one vector (`out[j]` = Σ lanes of `v[j]`), in a fixed order.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn sum_lanes(v: [__m512; LANES]) -> __m512 {
    // Pairs of vectors: within each 128-bit lane, [a0+a2, b0+b2, a1+a3, b1+b3].
    let pairs: [__m512; 8] = std::array::from_fn(|i| {
        let (a, b) = (v[2 * i], v[2 * i + 1]);
        _mm512_add_ps(_mm512_unpacklo_ps(a, b), _mm512_unpackhi_ps(a, b))
    });
    // Fours: each 128-bit lane holds one partial sum of each of four vectors, in order.
    let fours: [__m512; 4] = std::array::from_fn(|i| {
        let (a, b) = (
            _mm512_castps_pd(pairs[2 * i]),
            _mm512_castps_pd(pairs[2 * i + 1]),
        );
        _mm512_add_ps(
            _mm512_castpd_ps(_mm512_unpacklo_pd(a, b)),
            _mm512_castpd_ps(_mm512_unpackhi_pd(a, b)),
        )
    });
    // Then 128-bit lanes of two such vectors added pairwise, twice.
    let join = |a: __m512, b: __m512| {
        _mm512_add_ps(
            _mm512_shuffle_f32x4::<0b10_00_10_00>(a, b),
            _mm512_shuffle_f32x4::<0b11_01_11_01>(a, b),
        )
    };
    let eights = [join(fours[0], fours[1]), join(fours[2], fours[3])];
    join(eights[0], eights[1])
}

/// [`weighted_values`] for `hd = 16·C`: up to four rows at a time, as many as keep the sums and
/// a value row in registers.
///
/// # Safety
/// AVX-512F; the lengths as [`weighted_values`] checks them.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn weighted_rows<T: CacheValue, const C: usize>(p: &[f32], v: &[T], out: &mut [f32]) {
    let rows = out.len() / (C * LANES);
    let most = (LANES / C).clamp(1, 4);
    let mut r0 = 0;
    while r0 < rows {
        let g = (rows - r0).min(most);
        // SAFETY: the caller's, for rows r0..r0 + g.
        unsafe {
            match g {
                4 => weighted_simd::<T, C, 4>(p, v, out, r0),
                3 => weighted_simd::<T, C, 3>(p, v, out, r0),
                2 => weighted_simd::<T, C, 2>(p, v, out, r0),
                _ => weighted_simd::<T, C, 1>(p, v, out, r0),
            }
        }
        r0 += g;
    }
}

/// Rows `r0..r0 + G` of [`weighted_values`] for `hd = 16·C`: fixed counts, so the sums stay in
/// registers.
///
/// # Safety
/// AVX-512F; the lengths as [`weighted_values`] checks them, and rows `r0..r0 + G` exist.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn weighted_simd<T: CacheValue, const C: usize, const G: usize>(
    p: &[f32],
    v: &[T],
    out: &mut [f32],
    r0: usize,
) {
    let hd = C * LANES;
    let t = v.len() / hd;
    let mut acc = [[_mm512_setzero_ps(); C]; G];
    for j in 0..t {
        // SAFETY: value row j < t has hd values.
        let vj: [__m512; C] =
            std::array::from_fn(|c| unsafe { T::load(v.as_ptr().add(j * hd + c * LANES)) });
        for (i, acc) in acc.iter_mut().enumerate() {
            // SAFETY: row r0 + i < rows of p has t weights.
            let w = _mm512_set1_ps(unsafe { *p.get_unchecked((r0 + i) * t + j) });
            for (a, vc) in acc.iter_mut().zip(&vj) {
                *a = _mm512_fmadd_ps(w, *vc, *a);
            }
        }
    }
    for (i, acc) in acc.iter().enumerate() {
        for (c, a) in acc.iter().enumerate() {
            // SAFETY: row r0 + i < rows of out has hd values.
            unsafe { _mm512_storeu_ps(out.as_mut_ptr().add((r0 + i) * hd + c * LANES), *a) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both products equal the plain loops for every head size, row count and a key count that
    /// is not a multiple of 16 (and one under 16), on f32 and f16 caches.
    #[test]
    fn products_equal_plain_loops() {
        for hd in [16, 32, 64, 128] {
            if !supported(hd) {
                eprintln!("skipped: no AVX-512");
                return;
            }
            for (rows, t) in [(1, 5), (3, 37), (6, 48), (9, 130)] {
                let wave = |n: usize, f: f32| -> Vec<f32> {
                    (0..n).map(|i| ((i as f32) * f).sin()).collect()
                };
                let (q, k, p) = (
                    wave(rows * hd, 0.37),
                    wave(t * hd, 0.11),
                    wave(rows * t, 0.7),
                );
                check(&q, &k, &p, hd, rows, t);
                // The f16 cache: the same sums of the values it holds.
                let k16: Vec<half::f16> = k.iter().map(|&v| half::f16::from_f32(v)).collect();
                check(&q, &k16, &p, hd, rows, t);
            }
        }
    }

    fn check<T: CacheValue>(q: &[f32], k: &[T], p: &[f32], hd: usize, rows: usize, t: usize) {
        let mut s = vec![0f32; rows * t];
        scores(q, k, hd, &mut s);
        let mut o = vec![0f32; rows * hd];
        weighted_values(p, k, hd, &mut o);
        let k: Vec<f32> = k.iter().map(|&v| v.into()).collect();
        for r in 0..rows {
            for j in 0..t {
                let want: f32 = (0..hd).map(|c| q[r * hd + c] * k[j * hd + c]).sum();
                assert!((s[r * t + j] - want).abs() < 1e-4, "hd {hd} score {r},{j}");
            }
            for c in 0..hd {
                let want: f32 = (0..t).map(|j| p[r * t + j] * k[j * hd + c]).sum();
                assert!((o[r * hd + c] - want).abs() < 1e-4, "hd {hd} value {r},{c}");
            }
        }
    }

    /// The softmax equals the scalar one (libm's exp, a sequential sum) within 1e-6 relative, over lengths with and without a tail, with
    /// very negative and -inf scores (weight 0), and all -inf gives zeros.
    #[test]
    fn softmax_matches_the_scalar_one() {
        if !supported(16) {
            eprintln!("skipped: no AVX-512");
            return;
        }
        for len in [1, 7, 16, 33, 130] {
            let mut x: Vec<f32> = (0..len).map(|i| ((i as f32) * 0.73).sin() * 30.0).collect();
            x[len / 2] = f32::NEG_INFINITY;
            if len > 2 {
                x[1] = -1e30;
            }
            let mut want = vec![0f32; len];
            crate::fused::softmax_row(&x, &mut want, 0.7, None, len);
            let mut got = vec![9f32; len];
            softmax(&x, &mut got, 0.7);
            for (g, w) in got.iter().zip(&want) {
                assert!((g - w).abs() <= 1e-6 * w.max(1e-30), "{len}: {g} vs {w}");
            }
            assert_eq!(got[len / 2], 0.0);
        }
        let mut y = [9f32; 3];
        softmax(&[f32::NEG_INFINITY; 3], &mut y, 1.0);
        assert_eq!(y, [0.0; 3]);
    }

    /// The gate equals the scalar formula within 1e-6 relative (a few ulp of the exponential),
    /// from large negative to large positive inputs, with a tail; NaN stays NaN.
    #[test]
    fn silu_gate_matches_the_scalar_formula() {
        if !supported(16) {
            eprintln!("skipped: no AVX-512");
            return;
        }
        let len = 1000;
        let mut g: Vec<f32> = (0..len).map(|i| (i as f32 - 500.0) * 0.25).collect();
        g[3] = f32::NAN;
        g[4] = f32::NEG_INFINITY;
        let u: Vec<f32> = (0..len).map(|i| (i as f32 * 0.1).cos()).collect();
        let mut got = vec![0f32; len];
        silu_gate(&g, &u, &mut got);
        for i in 0..len {
            let want = g[i] / (1.0 + (-g[i]).exp()) * u[i];
            if want.is_nan() {
                assert!(got[i].is_nan(), "{i}: {}", got[i]);
            } else {
                assert!(
                    (got[i] - want).abs() <= 1e-6 * want.abs(),
                    "{i}: {} vs {want}",
                    got[i]
                );
            }
        }
    }
}
