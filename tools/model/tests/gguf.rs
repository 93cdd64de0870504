//! GGUF models: tiny fixtures converted as llama.cpp does (logits equal to the safetensors model,
//! tokenizer ids equal to tokenizer.json's), every block type against candle's own dequantizer,
//! and the real SmolLM2 file from scripts/fetch-smollm2 against transformers' ids.

use anyhow::{Context, Result};
use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use ftkit_model::fixtures::{TinySpec, write_tiny_model};
use ftkit_model::gguf::fixtures::{llama_permute, write_tiny_gguf};
use ftkit_model::model::mmap_var_builder;
use ftkit_model::{
    CausalLm, ChatTemplate, ForwardOpts, GgufFile, ModelConfig, ModelSource, TokenizerConfig,
    load_tokenizer, resolve,
};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Code, digits, unicode, whitespace runs and special tokens.
const VARIED: &str = "fn main() {\n    let x: Vec<u32> = (0..10).collect(); // 42 items\n}\n\
    Prices 3.14159 and 1,000,000 in 2026.\tTabs\t\tand   spaces   \n\n\nThe capital of France is Paris. \
    café naïve Ελληνικά 日本語 🤖 <|im_start|>user\nWhat is two plus two?<|im_end|>";

fn max_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
    Ok((a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?)
}

fn ids(tok: &tokenizers::Tokenizer, text: &str) -> Result<Vec<u32>> {
    Ok(tok
        .encode(text, false)
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .get_ids()
        .to_vec())
}

/// A tiny safetensors model in `root/st` and its GGUF (`qtype`) in `root/gguf/tiny.gguf`.
fn tiny_pair(root: &Path, spec: &TinySpec, qtype: GgmlDType) -> Result<(PathBuf, PathBuf)> {
    let st = root.join("st");
    write_tiny_model(&st, spec)?;
    std::fs::create_dir_all(root.join("gguf"))?;
    let gguf = root.join("gguf").join("tiny.gguf");
    write_tiny_gguf(&st, &gguf, qtype, None)?;
    Ok((st, gguf))
}

fn token_batch(tok: &tokenizers::Tokenizer) -> Result<Tensor> {
    let mut v = ids(tok, "The capital of France is Paris. Two plus two is four.")?;
    v.truncate(12);
    Ok(Tensor::new(v.as_slice(), &Device::Cpu)?.unsqueeze(0)?)
}

/// GGUF logits (through resolve + `CausalLm::from_files`, as every tool loads) against the
/// safetensors model whose 2-D weights went through the same `qtype` round trip in candle.
fn logits_match(spec: TinySpec, qtype: GgmlDType) -> Result<f32> {
    let d = tempfile::tempdir()?;
    let (st, gguf) = tiny_pair(d.path(), &spec, qtype)?;
    let st_files = resolve(&ModelSource::Dir(st.clone()), &Default::default())?;
    let cfg = ModelConfig::from_file(&st_files.config)?;
    let vb = mmap_var_builder(&st_files.weights, DType::F32, &Device::Cpu)?;
    let mut expected: HashMap<String, Tensor> = HashMap::new();
    let raw = candle_core::safetensors::load(&st_files.weights[0], &Device::Cpu)?;
    for (name, t) in raw {
        let t = if t.rank() == 2 {
            QTensor::quantize(&t, qtype)?.dequantize(&Device::Cpu)?
        } else {
            t
        };
        expected.insert(name, t);
    }
    drop(vb);
    let reference = CausalLm::load(
        &cfg,
        VarBuilder::from_tensors(expected, DType::F32, &Device::Cpu),
    )?;
    let tok = load_tokenizer(&st_files.tokenizer)?;
    let x = token_batch(&tok)?;
    let want = reference.forward(&x, &ForwardOpts::default())?;

    // FILE.gguf and a DIR holding it resolve to the same GGUF model.
    for source in [gguf.clone(), gguf.parent().context("parent")?.to_path_buf()] {
        let files = resolve(&ModelSource::Dir(source), &Default::default())?;
        assert_eq!(files.gguf.as_deref(), Some(gguf.as_path()));
        let model = CausalLm::from_files(&files, DType::F32, &Device::Cpu)?;
        let g = &model.config;
        assert_eq!(
            (g.arch, g.vocab_size, g.hidden_size, g.intermediate_size),
            (
                cfg.arch,
                cfg.vocab_size,
                cfg.hidden_size,
                cfg.intermediate_size
            )
        );
        assert_eq!(
            (
                g.num_hidden_layers,
                g.num_attention_heads,
                g.num_key_value_heads,
                g.head_dim
            ),
            (
                cfg.num_hidden_layers,
                cfg.num_attention_heads,
                cfg.num_key_value_heads,
                cfg.head_dim
            )
        );
        assert_eq!(g.tie_word_embeddings, cfg.tie_word_embeddings);
        assert_eq!(g.attention_bias, cfg.attention_bias);
        assert_eq!(g.rope_theta, cfg.rope_theta);
        assert!((g.rms_norm_eps - cfg.rms_norm_eps).abs() < 1e-12);
        let got = model.forward(&x, &ForwardOpts::default())?;
        let diff = max_diff(&got, &want)?;
        eprintln!(
            "{:?} {qtype:?}: max abs logit diff vs safetensors {diff:e}",
            spec.arch
        );
        assert!(
            diff < 1e-4,
            "{:?} {qtype:?}: max abs logit diff {diff}",
            spec.arch
        );
    }
    // Against the unquantized model too (relative to its largest logit): q8_0 stays close.
    let plain = CausalLm::load(
        &cfg,
        mmap_var_builder(&st_files.weights, DType::F32, &Device::Cpu)?,
    )?
    .forward(&x, &ForwardOpts::default())?;
    let from_gguf = CausalLm::from_gguf(&gguf, DType::F32, &Device::Cpu)?
        .forward(&x, &ForwardOpts::default())?;
    Ok(ftkit_model::fixtures::max_rel_diff(&from_gguf, &plain)?)
}

#[test]
fn tiny_llama_f32_gguf_gives_the_safetensors_logits() -> Result<()> {
    let diff = logits_match(TinySpec::llama(3), GgmlDType::F32)?;
    assert!(diff < 1e-6, "{diff}");
    Ok(())
}

#[test]
fn tiny_qwen2_f32_gguf_gives_the_safetensors_logits() -> Result<()> {
    let diff = logits_match(TinySpec::qwen2(4), GgmlDType::F32)?;
    assert!(diff < 1e-6, "{diff}");
    Ok(())
}

#[test]
fn tiny_llama_q8_0_gguf_gives_the_dequantized_safetensors_logits() -> Result<()> {
    let diff = logits_match(TinySpec::llama(5), GgmlDType::Q8_0)?;
    // Q8_0 itself moves logits a little (exactness is checked against the dequantized weights).
    assert!(diff > 0.0 && diff < 0.1, "{diff}");
    Ok(())
}

#[test]
fn tiny_qwen2_q8_0_gguf_gives_the_dequantized_safetensors_logits() -> Result<()> {
    let diff = logits_match(TinySpec::qwen2(6), GgmlDType::Q8_0)?;
    assert!(diff > 0.0 && diff < 0.1, "{diff}");
    Ok(())
}

/// A GGUF's quantized blocks in the inference path: the prefill and the decoding step multiply by
/// them (candle's quantized matmul, or the VNNI tiles for Q8_0 where the CPU has them), which
/// round the activations too, so the logits stay within that error of the dequantized weights'
/// (and differ from them: the path ran). Q4_1 has no SIMD kernel in candle: its blocks are
/// re-encoded as Q8_0, which stays within Q4_1's own error.
#[test]
fn quantized_blocks_decode_within_their_error_of_the_dequantized_weights() -> Result<()> {
    use ftkit_model::Pretrained;
    use ftkit_model::generate::KvCache;
    for (spec, qtype, tol) in [
        (TinySpec::llama(41), GgmlDType::Q8_0, 0.05f32),
        (TinySpec::qwen2(42), GgmlDType::Q8_0, 0.05),
        (TinySpec::llama(43), GgmlDType::Q4_0, 0.5),
        (TinySpec::qwen2(44), GgmlDType::Q4_1, 0.5),
    ] {
        let d = tempfile::tempdir()?;
        let (_, gguf) = tiny_pair(d.path(), &spec, qtype)?;
        let spec_str = gguf.to_str().context("path")?;
        let load = || Pretrained::load(spec_str, &Default::default(), DType::F32, &Device::Cpu);
        let plain = load()?;
        let mut quant = load()?;
        let layers = quant.model.linears().count();
        assert_eq!(
            quant.quantize_for_inference()?,
            layers,
            "every linear layer"
        );
        let blocks = &quant.model.linears().next().context("a layer")?.quantized;
        let Some(inference_type) = blocks.as_ref().and_then(|b| b.format()) else {
            anyhow::bail!("{qtype:?}: not blocks: {blocks:?}");
        };
        let want = match qtype {
            GgmlDType::Q4_1 => GgmlDType::Q8_0,
            t => t,
        };
        assert_eq!(inference_type, want, "{qtype:?}");
        let prompt = token_batch(&plain.tokenizer)?;
        let next = Tensor::new(&[[7u32]], &Device::Cpu)?;
        let run = |lm: &Pretrained| -> Result<(Tensor, Tensor)> {
            let mut cache = KvCache::new(&lm.model, vec![0], 16)?;
            let prefill = lm.model.forward_cached(&prompt, &mut cache)?;
            let step = lm.model.forward_cached(&next, &mut cache)?;
            Ok((prefill, step))
        };
        assert!(quant.model.has_output_blocks(), "{qtype:?}: output blocks");
        let ((p0, s0), (p1, s1)) = (run(&plain)?, run(&quant)?);
        // Prefill and step both ran on the blocks (different logits), within their error.
        for (what, exact, blocks) in [("prefill", &p0, &p1), ("step", &s0, &s1)] {
            let scale = exact.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
            let diff = max_diff(exact, blocks)?;
            assert!(
                diff > 0.0 && diff < tol * scale.max(1.0),
                "{qtype:?} {what}: {diff} (logits up to {scale})"
            );
        }
    }
    Ok(())
}

/// A minimal llama GGUF: token_embd (F32) plus q, k and up projections of `ty`.
fn write_typed(path: &Path, ty: GgmlDType, tensors: &[(&str, &Tensor)]) -> Result<()> {
    let meta: Vec<(&str, Value)> = vec![
        ("general.architecture", Value::String("llama".into())),
        ("llama.embedding_length", Value::U32(256)),
        ("llama.block_count", Value::U32(1)),
        ("llama.feed_forward_length", Value::U32(256)),
        ("llama.attention.head_count", Value::U32(4)),
        ("llama.attention.head_count_kv", Value::U32(2)),
        ("llama.attention.layer_norm_rms_epsilon", Value::F32(1e-5)),
    ];
    let mut qts = vec![];
    for (name, t) in tensors {
        let ty = if *name == "token_embd.weight" {
            GgmlDType::F32
        } else {
            ty
        };
        qts.push((name.to_string(), QTensor::quantize(t, ty)?));
    }
    let m: Vec<(&str, &Value)> = meta.iter().map(|(k, v)| (*k, v)).collect();
    let t: Vec<(&str, &QTensor)> = qts.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut f = std::fs::File::create(path)?;
    gguf_file::write(&mut f, &m, &t)?;
    Ok(())
}

#[test]
fn every_supported_type_dequantizes_as_candle_does() -> Result<()> {
    let d = tempfile::tempdir()?;
    let dev = Device::Cpu;
    let embd = Tensor::randn(0f32, 1.0, (8, 256), &dev)?;
    let q = Tensor::randn(0f32, 1.0, (256, 256), &dev)?;
    let k = Tensor::randn(0f32, 1.0, (128, 256), &dev)?;
    let up = Tensor::randn(0f32, 1.0, (256, 256), &dev)?;
    // Inverse of llama_permute: [heads, hd/2, 2, in] with axes 1 and 2 swapped back.
    let unpermute = |w: &Tensor, heads: usize| -> Result<Tensor> {
        let (rows, cols) = w.dims2()?;
        Ok(w.reshape((heads, rows / heads / 2, 2, cols))?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((rows, cols))?)
    };
    for ty in [
        GgmlDType::F32,
        GgmlDType::F16,
        GgmlDType::BF16,
        GgmlDType::Q8_0,
        GgmlDType::Q4_0,
        GgmlDType::Q4_1,
        GgmlDType::Q4K,
        GgmlDType::Q5K,
        GgmlDType::Q6K,
    ] {
        let path = d.path().join(format!("{ty:?}.gguf"));
        let (qp, kp) = (llama_permute(&q, 4)?, llama_permute(&k, 2)?);
        write_typed(
            &path,
            ty,
            &[
                ("token_embd.weight", &embd),
                ("blk.0.attn_q.weight", &qp),
                ("blk.0.attn_k.weight", &kp),
                ("blk.0.ffn_up.weight", &up),
            ],
        )?;
        // candle's reader and dequantizer on the stored tensors.
        let mut reader = std::io::BufReader::new(std::fs::File::open(&path)?);
        let content = gguf_file::Content::read(&mut reader)?;
        let mut candle = |n: &str| -> Result<Tensor> {
            Ok(content.tensor(&mut reader, n, &dev)?.dequantize(&dev)?)
        };
        let want_up = candle("blk.0.ffn_up.weight")?;
        let want_q = unpermute(&candle("blk.0.attn_q.weight")?, 4)?;
        let want_k = unpermute(&candle("blk.0.attn_k.weight")?, 2)?;

        let file = GgufFile::open(&path)?;
        let ours = file.tensors(DType::F32, &dev)?;
        for (name, want) in [
            ("model.layers.0.mlp.up_proj.weight", &want_up),
            ("model.layers.0.self_attn.q_proj.weight", &want_q),
            ("model.layers.0.self_attn.k_proj.weight", &want_k),
        ] {
            let got = ours
                .get(name)
                .with_context(|| format!("{ty:?}: no {name}"))?;
            assert_eq!(max_diff(got, want)?, 0.0, "{ty:?} {name}");
        }
        // The quantized tensors keep their type, in HF row order.
        let qts: HashMap<String, QTensor> = file.qtensors(&dev)?.into_iter().collect();
        let qq = &qts["model.layers.0.self_attn.q_proj.weight"];
        assert_eq!(qq.dtype(), ty);
        assert_eq!(max_diff(&qq.dequantize(&dev)?, &want_q)?, 0.0, "{ty:?}");
        // And the values are the original ones up to the format's precision.
        let rel = (max_diff(&want_q, &q)? as f64) / 4.0;
        assert!(
            rel < 0.5,
            "{ty:?}: dequantized q is far from the original ({rel})"
        );
        // Into the dtype asked for.
        let half = file.tensors(DType::BF16, &dev)?;
        assert_eq!(
            half["model.layers.0.mlp.up_proj.weight"].dtype(),
            DType::BF16
        );
    }
    Ok(())
}

#[test]
fn tokenizer_from_gguf_gives_the_tokenizer_json_ids() -> Result<()> {
    for spec in [TinySpec::llama(7), TinySpec::qwen2(8)] {
        let d = tempfile::tempdir()?;
        let (st, gguf) = tiny_pair(d.path(), &spec, GgmlDType::F32)?;
        let want = load_tokenizer(&st.join("tokenizer.json"))?;
        let got = load_tokenizer(&gguf)?;
        assert_eq!(got.get_vocab_size(true), want.get_vocab_size(true));
        let v = ids(&want, VARIED)?;
        assert!(v.len() > 50, "{v:?}");
        assert_eq!(ids(&got, VARIED)?, v, "{:?}", spec.arch);
        for line in ftkit_model::fixtures::CORPUS.lines() {
            assert_eq!(ids(&got, line)?, ids(&want, line)?, "{line}");
        }
        let text = got
            .decode(&ids(&got, VARIED)?, false)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        assert_eq!(text, VARIED);

        let want_cfg = TokenizerConfig::load(Some(&st.join("tokenizer_config.json")), None)?;
        let got_cfg = TokenizerConfig::load(Some(&gguf), None)?;
        // A GGUF names a BOS even where tokenizer_config.json has none (Qwen2.5): llama.cpp's
        // converter, like ours, takes config.json's bos_token_id.
        let want_bos = want_cfg
            .bos_token
            .clone()
            .or_else(|| got_cfg.bos_token.clone());
        assert_eq!(
            got_cfg,
            TokenizerConfig {
                bos_token: want_bos,
                ..want_cfg.clone()
            },
            "{:?}",
            spec.arch
        );
        // A training example encodes the same: ids and assistant mask.
        let chat = [
            ftkit_model::ChatMessage::new("user", "What is 2 + 2?\n  Think."),
            ftkit_model::ChatMessage::new("assistant", "It is 4 (four)."),
        ];
        let enc = |cfg: &TokenizerConfig, tok: &tokenizers::Tokenizer| {
            ftkit_model::encode_chat(&chat, &ChatTemplate::from_config(cfg)?, tok)
        };
        let (a, b) = (enc(&want_cfg, &want)?, enc(&got_cfg, &got)?);
        assert_eq!(a.ids, b.ids);
        assert_eq!(a.assistant_mask, b.assistant_mask);
        assert!(b.assistant_mask.iter().any(|m| *m) && !b.assistant_mask[0]);
    }
    Ok(())
}

#[test]
fn an_unknown_pre_tokenizer_is_an_error_naming_it() -> Result<()> {
    let d = tempfile::tempdir()?;
    let st = d.path().join("st");
    write_tiny_model(&st, &TinySpec::llama(9))?;
    let gguf = d.path().join("x.gguf");
    write_tiny_gguf(&st, &gguf, GgmlDType::F32, Some("mystery-bpe"))?;
    let err = format!("{:#}", load_tokenizer(&gguf).unwrap_err());
    assert!(
        err.contains("\"mystery-bpe\"") && err.contains("smollm"),
        "{err}"
    );
    Ok(())
}

#[test]
fn a_directory_with_two_gguf_files_asks_for_one() -> Result<()> {
    let d = tempfile::tempdir()?;
    std::fs::write(d.path().join("a.gguf"), b"")?;
    std::fs::write(d.path().join("b.gguf"), b"")?;
    let err = format!(
        "{:#}",
        resolve(&ModelSource::Dir(d.path().into()), &Default::default()).unwrap_err()
    );
    assert!(
        err.contains("a.gguf, b.gguf") && err.contains("FILE.gguf"),
        "{err}"
    );
    Ok(())
}

use ftkit_testkit::smollm2;

#[test]
fn smollm2_config_and_types() -> Result<()> {
    let file = GgufFile::open(&smollm2())?;
    let c = file.config()?;
    assert_eq!(c.arch, ftkit_model::Arch::Llama);
    assert_eq!(
        (c.num_hidden_layers, c.hidden_size, c.intermediate_size),
        (30, 576, 1536)
    );
    assert_eq!(
        (c.num_attention_heads, c.num_key_value_heads, c.head_dim),
        (9, 3, 64)
    );
    assert_eq!((c.rope_theta, c.max_position_embeddings), (100000.0, 8192));
    assert!((c.rms_norm_eps - 1e-5).abs() < 1e-9);
    assert_eq!(c.vocab_size, 49152);
    assert!(c.tie_word_embeddings);
    assert_eq!(
        (c.bos_token_id, c.eos_token_ids.clone()),
        (Some(1), vec![2])
    );
    let types: HashMap<String, GgmlDType> = file
        .qtensors(&Device::Cpu)?
        .into_iter()
        .map(|(n, q)| (n, q.dtype()))
        .collect();
    assert_eq!(types.len(), 30 * 9 + 2);
    assert_eq!(types["model.embed_tokens.weight"], GgmlDType::Q8_0);
    assert_eq!(
        types["model.layers.0.self_attn.q_proj.weight"],
        GgmlDType::Q4_1
    );
    assert_eq!(types["model.norm.weight"], GgmlDType::F32);
    Ok(())
}

#[test]
fn smollm2_tokenizer_matches_transformers() -> Result<()> {
    let path = smollm2();
    let tok = load_tokenizer(&path)?;
    assert_eq!(
        ids(&tok, "The capital of France is")?,
        [504, 3575, 282, 4649, 314]
    );
    let fixture: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/model/smollm2-tokens.json"),
    )?)?;
    let cases = fixture["cases"].as_array().context("cases")?;
    assert!(cases.len() >= 5);
    for case in cases {
        let text = case["text"].as_str().context("text")?;
        let want: Vec<u32> = serde_json::from_value(case["ids"].clone())?;
        assert_eq!(ids(&tok, text)?, want, "{text:?}");
        let back = tok
            .decode(&want, false)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        assert_eq!(back, text);
    }
    let cfg = TokenizerConfig::load(Some(&path), None)?;
    assert_eq!(cfg.eos_token.as_deref(), Some("<|im_end|>"));
    let tmpl = ChatTemplate::from_config(&cfg)?;
    let text = tmpl.render(&[ftkit_model::ChatMessage::new("user", "Hi")], true)?;
    assert!(
        text.contains("<|im_start|>user\nHi<|im_end|>\n")
            && text.ends_with("<|im_start|>assistant\n"),
        "{text:?}"
    );
    Ok(())
}

#[test]
fn smollm2_greedy_continuation_is_transformers() -> Result<()> {
    let path = smollm2();
    let tok = load_tokenizer(&path)?;
    let model = CausalLm::from_gguf(&path, DType::F32, &Device::Cpu)?;
    let mut seq = ids(&tok, "The capital of France is")?;
    let prompt = seq.len();
    // Plain argmax over full-sequence logits (no KV cache): the reference decoding.
    for _ in 0..6 {
        let x = Tensor::new(seq.as_slice(), &Device::Cpu)?.unsqueeze(0)?;
        let h = model.hidden(&x, &ForwardOpts::default())?;
        let last = h.narrow(1, seq.len() - 1, 1)?;
        let logits = model.logits(&last)?.flatten_all()?;
        seq.push(logits.argmax(0)?.to_scalar::<u32>()?);
    }
    let text = tok
        .decode(&seq[prompt..], false)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    // FINDINGS.md: transformers (f32-dequantized) continues " Paris.\n\nThe answer is: 201".
    assert_eq!(text, " Paris.\n\nThe answer");
    Ok(())
}

/// SmolLM2's vocabulary under each other pre-tokenizer we rebuild (its metadata copied with
/// `tokenizer.ggml.pre` swapped, no tensors): the ids transformers' GGUF converter gives.
#[test]
fn other_pre_tokenizers_match_transformers_on_smollm2_vocab() -> Result<()> {
    let path = smollm2();
    let mut reader = std::io::BufReader::new(std::fs::File::open(&path)?);
    let content = gguf_file::Content::read(&mut reader)?;
    let fixture: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/model/smollm2-tokens.json"),
    )?)?;
    let texts: Vec<&str> = fixture["cases"]
        .as_array()
        .context("cases")?
        .iter()
        .filter_map(|c| c["text"].as_str())
        .collect();
    let d = tempfile::tempdir()?;
    let mut differs = 0;
    // llama.cpp's names, and the fixture's keys (transformers' converter names GPT-2's `gpt2`).
    for (pre, key) in [
        ("gpt-2", "gpt2"),
        ("qwen2", "qwen2"),
        ("llama-bpe", "llama-bpe"),
    ] {
        let pre_value = Value::String(pre.to_string());
        let meta: Vec<(&str, &Value)> = content
            .metadata
            .iter()
            .map(|(k, v)| {
                if k == "tokenizer.ggml.pre" {
                    (k.as_str(), &pre_value)
                } else {
                    (k.as_str(), v)
                }
            })
            .collect();
        let copy = d.path().join(format!("{pre}.gguf"));
        gguf_file::write(&mut std::fs::File::create(&copy)?, &meta, &[])?;
        let tok = load_tokenizer(&copy)?;
        let want: Vec<Vec<u32>> = serde_json::from_value(fixture["by_pre"][key].clone())?;
        assert_eq!(want.len(), texts.len());
        for (text, want) in texts.iter().zip(&want) {
            assert_eq!(&ids(&tok, text)?, want, "{pre}: {text:?}");
        }
        let smollm: Vec<Vec<u32>> = fixture["cases"]
            .as_array()
            .context("cases")?
            .iter()
            .map(|c| serde_json::from_value(c["ids"].clone()))
            .collect::<Result<_, _>>()?;
        differs += usize::from(want != smollm);
    }
    // The splits really differ: qwen2's and llama-bpe's ids are not smollm's.
    assert_eq!(differs, 2);
    Ok(())
}
