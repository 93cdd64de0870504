//! NF4, the 4-bit format of QLoRA (Dettmers et al. 2023) as bitsandbytes stores it: blocks of 64
//! weights, each weight the index of the nearest of 16 "normal float" levels after dividing the
//! block by its largest magnitude (`absmax`), two indices per byte (first weight in the high
//! nibble). With double quantization the `absmax` values are themselves stored in 8 bits: minus
//! their mean, in blocks of 256 with one f32 scale each (bitsandbytes uses its 8-bit dynamic
//! code there; we use a linear 8-bit code, the same 8 bits per scale: its step is 1/254 of a
//! scale block's range, below the 4-bit step of the weights it scales by two orders).

/// bitsandbytes' NF4 code book (`functional.py`, `get_4bit_type("nf4")`).
pub const LEVELS: [f32; 16] = [
    -1.0,
    -0.696_192_8,
    -0.525_073_05,
    -0.394_917_5,
    -0.284_441_38,
    -0.184_773_43,
    -0.091_050_036,
    0.0,
    0.079_580_3,
    0.160_930_2,
    0.246_112_3,
    0.337_915_24,
    0.440_709_83,
    0.562_617,
    0.722_956_84,
    1.0,
];

/// Weights per block.
pub const BLOCK: usize = 64;
/// Scales per block of the double quantization.
pub const SCALE_BLOCK: usize = 256;

/// The index of the level nearest to `v` (in [-1, 1]); ties go to the upper level.
fn nearest(v: f32) -> u8 {
    // Midpoints between consecutive levels: bitsandbytes' comparison tree in closed form.
    let mut i = 0;
    while i < 15 && v >= (LEVELS[i] + LEVELS[i + 1]) / 2.0 {
        i += 1;
    }
    i as u8
}

/// How the block scales are stored.
#[derive(Debug, Clone, PartialEq)]
enum Scales {
    F32(Vec<f32>),
    /// `absmax[i] ≈ offset + code[i] / 127 · scale[i / SCALE_BLOCK]`.
    Double {
        offset: f32,
        codes: Vec<i8>,
        scales: Vec<f32>,
    },
}

/// A run of NF4 blocks (a whole number of blocks of 64 weights).
#[derive(Debug, Clone, PartialEq)]
pub struct Nf4 {
    /// Two indices per byte, the first weight in the high nibble.
    packed: Vec<u8>,
    scales: Scales,
}

impl Nf4 {
    /// Quantizes `xs` (a multiple of [`BLOCK`] values); `double_quant` stores the scales in 8 bits.
    pub fn quantize(xs: &[f32], double_quant: bool) -> Self {
        debug_assert!(xs.len().is_multiple_of(BLOCK));
        let mut packed = vec![0u8; xs.len() / 2];
        let mut absmax = Vec::with_capacity(xs.len() / BLOCK);
        for (block, out) in xs.chunks(BLOCK).zip(packed.chunks_mut(BLOCK / 2)) {
            let m = block.iter().fold(0f32, |m, v| m.max(v.abs()));
            absmax.push(m);
            let inv = if m > 0.0 { 1.0 / m } else { 0.0 };
            for (pair, byte) in block.chunks(2).zip(out.iter_mut()) {
                *byte = (nearest(pair[0] * inv) << 4) | nearest(pair[1] * inv);
            }
        }
        let scales = if double_quant {
            double(&absmax)
        } else {
            Scales::F32(absmax)
        };
        Self { packed, scales }
    }

    /// Number of weights.
    pub fn len(&self) -> usize {
        self.packed.len() * 2
    }

    pub fn is_empty(&self) -> bool {
        self.packed.is_empty()
    }

    /// Bytes held: indices and scales.
    pub fn bytes(&self) -> usize {
        self.packed.len()
            + match &self.scales {
                Scales::F32(s) => s.len() * 4,
                Scales::Double { codes, scales, .. } => 4 + codes.len() + scales.len() * 4,
            }
    }

    fn absmax(&self, block: usize) -> f32 {
        match &self.scales {
            Scales::F32(s) => s[block],
            Scales::Double {
                offset,
                codes,
                scales,
            } => offset + f32::from(codes[block]) / 127.0 * scales[block / SCALE_BLOCK],
        }
    }

    /// Weights `[start, start + out.len())` (block-aligned) into `out`.
    pub fn dequantize_into(&self, start: usize, out: &mut [f32]) {
        debug_assert!(start.is_multiple_of(BLOCK) && out.len().is_multiple_of(BLOCK));
        let first = start / BLOCK;
        for (i, block) in out.chunks_mut(BLOCK).enumerate() {
            let b = first + i;
            let m = self.absmax(b);
            let bytes = &self.packed[b * BLOCK / 2..(b + 1) * BLOCK / 2];
            for (pair, &byte) in block.chunks_mut(2).zip(bytes) {
                pair[0] = LEVELS[usize::from(byte >> 4)] * m;
                pair[1] = LEVELS[usize::from(byte & 15)] * m;
            }
        }
    }
}

fn double(absmax: &[f32]) -> Scales {
    let offset = if absmax.is_empty() {
        0.0
    } else {
        (absmax.iter().map(|&v| f64::from(v)).sum::<f64>() / absmax.len() as f64) as f32
    };
    let mut codes = Vec::with_capacity(absmax.len());
    let mut scales = Vec::with_capacity(absmax.len().div_ceil(SCALE_BLOCK));
    for block in absmax.chunks(SCALE_BLOCK) {
        let s = block.iter().fold(0f32, |m, v| m.max((v - offset).abs()));
        scales.push(s);
        let inv = if s > 0.0 { 127.0 / s } else { 0.0 };
        codes.extend(
            block
                .iter()
                .map(|v| ((v - offset) * inv).round().clamp(-127.0, 127.0) as i8),
        );
    }
    Scales::Double {
        offset,
        codes,
        scales,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize, seed: u64) -> Vec<f32> {
        crate::rng::Rng::derive(seed, "nf4").uniform_vec(n, 1.0)
    }

    #[test]
    fn levels_round_trip_exactly_and_pack_high_nibble_first() {
        // One block holding each level (times its absmax 2) four times.
        let xs: Vec<f32> = (0..BLOCK).map(|i| LEVELS[i % 16] * 2.0).collect();
        let q = Nf4::quantize(&xs, false);
        assert_eq!(q.packed[0], 0x01, "level 0 then level 1");
        let mut back = vec![0f32; BLOCK];
        q.dequantize_into(0, &mut back);
        assert_eq!(back, xs);
    }

    #[test]
    fn error_is_within_half_a_level_step_and_double_quant_stays_close() {
        let xs = values(BLOCK * 600, 7);
        let plain = Nf4::quantize(&xs, false);
        let dq = Nf4::quantize(&xs, true);
        let (mut a, mut b) = (vec![0f32; xs.len()], vec![0f32; xs.len()]);
        plain.dequantize_into(0, &mut a);
        dq.dequantize_into(0, &mut b);
        let widest = LEVELS.windows(2).map(|w| w[1] - w[0]).fold(0f32, f32::max);
        for (block, got) in xs.chunks(BLOCK).zip(a.chunks(BLOCK)) {
            let m = block.iter().fold(0f32, |m, v| m.max(v.abs()));
            for (x, y) in block.iter().zip(got) {
                assert!((x - y).abs() <= widest / 2.0 * m + 1e-6, "{x} → {y}");
            }
        }
        let err = |got: &[f32]| -> f64 {
            xs.iter()
                .zip(got)
                .map(|(x, y)| f64::from(x - y).powi(2))
                .sum::<f64>()
        };
        // Double quantization adds little error (its step is far below the weights').
        assert!(err(&b) < err(&a) * 1.01, "{} vs {}", err(&b), err(&a));
        assert!(err(&b) > 0.0 && dq.bytes() < plain.bytes());
        // 4.5 and about 4.13 bits per weight.
        assert_eq!(plain.bytes(), xs.len() / 2 + xs.len() / BLOCK * 4);
        assert!(dq.bytes() * 8 < xs.len() * 42 / 10);
        // A partial dequantization reads the same values.
        let mut part = vec![0f32; BLOCK * 2];
        dq.dequantize_into(BLOCK * 300, &mut part);
        assert_eq!(part, b[BLOCK * 300..BLOCK * 302]);
    }

    #[test]
    fn zero_blocks_stay_zero() {
        let q = Nf4::quantize(&[0.0; BLOCK], true);
        let mut back = vec![1f32; BLOCK];
        q.dequantize_into(0, &mut back);
        assert!(back.iter().all(|&v| v == 0.0));
    }
}
