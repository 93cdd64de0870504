//! The quantized frozen-linear product against f32 and against candle's own quantized matmul:
//! `cargo run --release -p ftkit-model --example bench_quant [ROWS]` prints, per format, the time
//! of dequantizing a `[2048, 512]` matrix (an MLP of bench-train's shape) and of `x W^T` and `g W` for ROWS rows
//! (default 256, one training row), next to f32 and to candle's `QMatMul` (which quantizes `x`).

use anyhow::Result;
use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Module};
use ftkit_model::fixtures::random_normal;
use ftkit_model::frozen::Frozen;
use ftkit_model::quant::{Format, QuantMatrix};
use std::io::Write;
use std::sync::Arc;
use std::time::Instant;

/// Median seconds of `f` over 15 runs.
fn time(mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    let mut t = Vec::new();
    for _ in 0..15 {
        let start = Instant::now();
        f()?;
        t.push(start.elapsed().as_secs_f64());
    }
    t.sort_by(f64::total_cmp);
    Ok(t[t.len() / 2])
}

fn main() -> Result<()> {
    let m: usize = std::env::args().nth(1).map_or(Ok(256), |s| s.parse())?;
    let (n, k) = (2048, 512);
    let w = random_normal("w", &[n, k], 1, 0.05)?;
    let x = random_normal("x", &[m, k], 2, 1.0)?;
    let g = random_normal("g", &[m, n], 3, 1.0)?;
    let ms = |s: f64| s * 1e3;
    let dense = Frozen::Dense(w.clone());
    let gs = g.flatten_all()?.to_vec1::<f32>()?;
    let fwd = |f: &Frozen| time(|| f.linear(&x).map(|_| ()));
    let bwd = |f: &Frozen| {
        time(|| {
            let mut dx = vec![0f32; m * k];
            match f {
                Frozen::Dense(w) => {
                    let _ = g.matmul(w)?;
                }
                Frozen::Quant(q) => q.grad_into(&gs, m, &mut dx, false)?,
            }
            Ok(())
        })
    };
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "[{n}, {k}] weight, {m} rows, {} threads",
        rayon::current_num_threads()
    )?;
    writeln!(
        out,
        "{:<8} {:>12} {:>10} {:>10} {:>14}",
        "format", "dequant ms", "x·Wᵀ ms", "g·W ms", "QMatMul ms"
    )?;
    writeln!(
        out,
        "{:<8} {:>12} {:>10.2} {:>10.2} {:>14}",
        "f32",
        "-",
        ms(fwd(&dense)?),
        ms(bwd(&dense)?),
        "-"
    )?;
    for format in [
        Format::Ggml(GgmlDType::Q8_0),
        Format::Ggml(GgmlDType::Q4_0),
        Format::Ggml(GgmlDType::Q5_0),
        Format::Ggml(GgmlDType::Q4K),
        Format::Nf4 {
            double_quant: false,
        },
    ] {
        let q = Arc::new(QuantMatrix::quantize(&w, format)?);
        let deq = time(|| q.dequantize(&Device::Cpu).map(|_| ()))?;
        let f = Frozen::Quant(q);
        let candle = match format {
            Format::Ggml(t) => {
                let qm = QMatMul::from_qtensor(QTensor::quantize(&w, t)?)?;
                format!(
                    "{:.2}",
                    ms(time(|| qm.forward(&x).map(|_| ()).map_err(Into::into))?)
                )
            }
            Format::Nf4 { .. } => "-".into(),
        };
        writeln!(
            out,
            "{:<8} {:>12.2} {:>10.2} {:>10.2} {:>14}",
            format.name(),
            ms(deq),
            ms(fwd(&f)?),
            ms(bwd(&f)?),
            candle
        )?;
    }
    Ok(())
}
