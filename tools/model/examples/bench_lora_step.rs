//! LoRA training-step timing on the CPU: our fused ops, step by step, vs the naive candle formulation.
//!
//! `cargo run --release -p ftkit-model --example bench_lora_step [HIDDEN LAYERS SEQ BATCH RANK STEPS]`
//! (defaults: 512 4 256 4 16 5, q/k/v/o targets, the FINDINGS.md shape). Prints one line per mode.

use anyhow::Result;
use candle_core::{D, DType, Device, Tensor};
use candle_nn::{Optimizer, VarMap};
use ftkit_model::fixtures::{TinySpec, write_tiny_model};
use ftkit_model::model::{CausalLm, ForwardOpts, mmap_var_builder};
use ftkit_model::{LoraConfig, ModelConfig, parse_targets};
use std::io::Write;
use std::time::Instant;

fn main() -> Result<()> {
    let a: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|s| s.parse().ok())
        .collect();
    let get = |i: usize, d: usize| a.get(i).copied().unwrap_or(d);
    let (h, layers, seq, batch, rank, steps) = (
        get(0, 512),
        get(1, 4),
        get(2, 256),
        get(3, 4),
        get(4, 16),
        get(5, 5),
    );
    let dir = tempfile::tempdir()?;
    let mut spec = TinySpec::llama(1);
    spec.hidden_size = h;
    spec.intermediate_size = h * 11 / 4;
    spec.num_hidden_layers = layers;
    spec.num_attention_heads = h / 64;
    spec.num_key_value_heads = h / 64;
    spec.init_std = 0.02;
    write_tiny_model(dir.path(), &spec)?;
    let cfg = ModelConfig::from_file(&dir.path().join("config.json"))?;
    let vb = mmap_var_builder(
        &[dir.path().join("model.safetensors")],
        DType::F32,
        &Device::Cpu,
    )?;
    let ids: Vec<u32> = (0..batch * seq)
        .map(|i| (i * 7 % cfg.vocab_size) as u32)
        .collect();
    let ids = Tensor::from_vec(ids, (batch, seq), &Device::Cpu)?;
    let mut out = std::io::stderr().lock();
    // (frozen-linear op, fused attention/norm/SwiGLU kernels, one-op LoRA layers)
    let modes = [
        (true, true, true),
        (true, true, false),
        (true, false, false),
        (false, false, false),
    ];
    let mut runs = Vec::new();
    for (frozen, fused, fused_lora) in modes {
        let mut m = CausalLm::load(&cfg, vb.clone())?;
        m.set_frozen_op(frozen);
        m.set_fused_ops(fused);
        m.set_fused_lora(fused_lora);
        let varmap = VarMap::new();
        m.attach_lora(
            &LoraConfig {
                rank,
                alpha: 2.0 * rank as f64,
                dropout: 0.0,
                rslora: false,
                targets: parse_targets("q_proj,k_proj,v_proj,o_proj")?,
                seed: 1,
            },
            &varmap,
        )?;
        let opt = candle_nn::AdamW::new(varmap.all_vars(), candle_nn::ParamsAdamW::default())?;
        runs.push((m, opt, Vec::new(), Vec::new()));
    }
    // Round-robin over the modes so machine-load drift hits them alike; step 0 is warm-up.
    for step in 0..steps + 1 {
        for (m, opt, times, fwd_times) in runs.iter_mut() {
            let t = Instant::now();
            let logits = m.forward(&ids.narrow(1, 0, seq - 1)?, &ForwardOpts::default())?;
            let v = logits.dim(D::Minus1)?;
            let loss = candle_nn::loss::cross_entropy(
                &logits.reshape(((seq - 1) * batch, v))?,
                &ids.narrow(1, 1, seq - 1)?.flatten_all()?,
            )?;
            let fwd = t.elapsed().as_secs_f64();
            let grads = loss.backward()?;
            opt.step(&grads)?;
            if step > 0 {
                times.push(t.elapsed().as_secs_f64());
                fwd_times.push(fwd);
            }
        }
    }
    for ((frozen, fused, fused_lora), (_, _, times, fwd_times)) in modes.iter().zip(&runs) {
        let mean = times.iter().sum::<f64>() / times.len() as f64;
        let fwd = fwd_times.iter().sum::<f64>() / times.len() as f64;
        writeln!(
            out,
            "{} h{h} L{layers} seq{seq} b{batch} r{rank}: {mean:.3} s/step (forward+loss {fwd:.3} s), {:.0} tokens/s",
            match (frozen, fused, fused_lora) {
                (true, true, true) => "fused attention, LoRA layers and kernels (default):",
                (true, true, false) => "fused attention and kernels, composed LoRA layers:",
                (true, false, _) => "frozen-linear, autograd attention/rmsnorm/rope:",
                _ => "naive (candle matmul, autograd softmax/rmsnorm/rope):",
            },
            (batch * seq) as f64 / mean
        )?;
    }
    Ok(())
}
