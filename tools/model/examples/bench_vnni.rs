//! The VNNI tile products alone ([`ftkit_model::vnni`]) on a random `[N, K]` Q8_0 matrix, for
//! 1 to 16 input rows: time per matrix, weight bytes streamed per second and multiply-adds per
//! second. With COPIES > 1 it cycles through that many copies, so the weights come from memory
//! rather than the cache, as in decoding.
//!
//! `cargo run --release -p ftkit-model --example bench_vnni [N K COPIES]` (defaults: SmolLM2's
//! MLP up-projection 1536 576, 100 copies). `CANDLE_NUM_THREADS` sets the threads.

use anyhow::{Result, bail};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use ftkit_model::vnni::{PackedQ8, available, products};
use std::io::Write;
use std::time::Instant;

fn main() -> Result<()> {
    let a: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|s| s.parse().ok())
        .collect();
    let (n, k, copies) = match a[..] {
        [n, k, c, ..] => (n, k, c.max(1)),
        _ => (1536, 576, 100),
    };
    if !available() {
        bail!("this CPU has no AVX-512 VNNI: nothing to measure");
    }
    let w = Tensor::randn(0f32, 1.0, (n, k), &Device::Cpu)?;
    let raw = QTensor::quantize(&w, GgmlDType::Q8_0)?.data()?.into_owned();
    let mats = (0..copies)
        .map(|_| PackedQ8::from_q8_0(&raw, n, k))
        .collect::<Result<Vec<_>>>()?;
    let mut out = std::io::stderr().lock();
    writeln!(out, "[{n}, {k}] Q8_0, {copies} copies")?;
    // A first pass unmeasured: page faults of the outputs and the pool's start-up otherwise
    // land on the first row count.
    for mat in &mats {
        products(&[mat], &vec![0.5; k], 1)?;
    }
    for m in [1usize, 2, 4, 8, 16] {
        let x: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.1).sin()).collect();
        let reps = 20;
        let t = Instant::now();
        for _ in 0..reps {
            for mat in &mats {
                products(&[mat], &x, m)?;
            }
        }
        let s = t.elapsed().as_secs_f64() / (reps * copies) as f64;
        // A tile stores 32 values in 36 bytes (an f32 step per row).
        let bytes = (n * k) as f64 * 36.0 / 32.0;
        writeln!(
            out,
            "rows {m:2}: {:8.1} us per matrix, {:6.2} GB/s, {:6.1} GMAC/s",
            s * 1e6,
            bytes / s / 1e9,
            (n * k * m) as f64 / s / 1e9
        )?;
    }
    Ok(())
}
