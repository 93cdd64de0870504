#![allow(clippy::unwrap_used, clippy::print_stdout)]

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::{DType, Device, Tensor};
use clap::CommandFactory;
use ftkit_model::fixtures::{TinySpec, random_normal, weight_shapes, write_tiny_model};
use ftkit_model::gguf::fixtures::llama_permute;
use ftkit_model::lora::LoraConfig;
use ftkit_model::peft::{AdapterConfig, load_adapter, save_adapter};
use ftkit_model::{CausalLm, ForwardOpts, ModelConfig, parse_targets};
use ftkit_testkit::{Run, golden, testdata};
use serde_json::Value as Json;
use std::path::{Path, PathBuf};

const BIN: &str = env!("CARGO_BIN_EXE_ft-merge-export");
const TARGETS: &str = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj";

fn tiny_model(dir: &Path, spec: &TinySpec) -> PathBuf {
    let out = dir.join(format!("{}-base", spec.arch.model_type()));
    write_tiny_model(&out, spec).unwrap();
    out
}

/// A PEFT adapter on every linear layer with random A and B (B is zero only at initialisation:
/// a trained adapter's is not), alpha 16 over rank 4.
fn adapter(dir: &Path, model: &Path, rslora: bool) -> PathBuf {
    let cfg = ModelConfig::from_file(&model.join("config.json")).unwrap();
    let spec = TinySpec {
        arch: cfg.arch,
        hidden_size: cfg.hidden_size,
        intermediate_size: cfg.intermediate_size,
        num_hidden_layers: cfg.num_hidden_layers,
        num_attention_heads: cfg.num_attention_heads,
        num_key_value_heads: cfg.num_key_value_heads,
        tie_word_embeddings: cfg.tie_word_embeddings,
        ..TinySpec::qwen2(1)
    };
    let lora = LoraConfig {
        rank: 4,
        alpha: 16.0,
        dropout: 0.0,
        rslora,
        targets: parse_targets(TARGETS).unwrap(),
        seed: 1,
    };
    let mut tensors = Vec::new();
    for (name, shape) in weight_shapes(&spec, cfg.vocab_size) {
        let Some(module) = name.strip_suffix(".weight") else {
            continue;
        };
        if !lora.targets.iter().any(|t| module.ends_with(t.as_str())) {
            continue;
        }
        let p = format!("base_model.model.{module}");
        let (out, inp) = (shape[0], shape[1]);
        tensors.push((
            format!("{p}.lora_A.weight"),
            random_normal(&format!("{p}/a"), &[4, inp], 7, 0.1).unwrap(),
        ));
        tensors.push((
            format!("{p}.lora_B.weight"),
            random_normal(&format!("{p}/b"), &[out, 4], 7, 0.1).unwrap(),
        ));
    }
    let out = dir.join(format!(
        "{}-adapter{}",
        cfg.arch.model_type(),
        if rslora { "-rs" } else { "" }
    ));
    save_adapter(&out, &AdapterConfig::from_lora(&lora, None), &tensors).unwrap();
    out
}

fn export(base: &Path, adapter: Option<&Path>, out: &Path, extra: &[&str]) -> Json {
    let mut r = Run::new(BIN)
        .arg("--base")
        .arg(base)
        .arg("--out-dir")
        .arg(out);
    if let Some(a) = adapter {
        r = r.arg("--adapter").arg(a);
    }
    let o = r.args(extra).run().expect_code(0);
    let lines: Vec<&str> = o.stdout_str().lines().collect();
    assert_eq!(lines.len(), 1, "one status line: {:?}", o.stdout_str());
    serde_json::from_str(lines[0]).unwrap()
}

/// Logits of `model` on fixed ids.
fn logits(model: &CausalLm) -> Tensor {
    let ids: Vec<u32> = (0..24u32).map(|i| (i * 37 + 5) % 200).collect();
    let x = Tensor::new(ids.as_slice(), &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    model.forward(&x, &ForwardOpts::default()).unwrap()
}

/// The base with the adapter applied as LoRA layers (not merged): what training ran.
fn base_plus_adapter(base: &Path, adapter: &Path) -> Tensor {
    let files = ftkit_model::resolve(
        &ftkit_model::ModelSource::Dir(base.to_path_buf()),
        &ftkit_model::HubOptions::from_env(true),
    )
    .unwrap();
    let mut model = CausalLm::from_files(&files, DType::F32, &Device::Cpu).unwrap();
    let a = load_adapter(adapter, &Device::Cpu).unwrap();
    model.attach_adapter(&a, &candle_nn::VarMap::new()).unwrap();
    logits(&model)
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

fn max_abs(a: &Tensor) -> f32 {
    a.abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

fn read_gguf(path: &Path) -> (Content, std::io::BufReader<std::fs::File>) {
    let mut r = std::io::BufReader::new(std::fs::File::open(path).unwrap());
    (Content::read(&mut r).unwrap(), r)
}

#[test]
fn merged_logits_equal_base_plus_adapter_in_safetensors_and_gguf() {
    for (spec, rslora) in [(TinySpec::qwen2(3), false), (TinySpec::llama(4), true)] {
        let d = tempfile::tempdir().unwrap();
        let base = tiny_model(d.path(), &spec);
        let ad = adapter(d.path(), &base, rslora);
        let want = base_plus_adapter(&base, &ad);
        let scale = max_abs(&want);
        let plain = logits(
            &CausalLm::from_files(
                &ftkit_model::resolve(
                    &ftkit_model::ModelSource::Dir(base.clone()),
                    &ftkit_model::HubOptions::from_env(true),
                )
                .unwrap(),
                DType::F32,
                &Device::Cpu,
            )
            .unwrap(),
        );
        // The adapter matters: otherwise equal logits would prove nothing.
        assert!(max_diff(&plain, &want) > 0.05 * scale, "{spec:?}");

        let st = d.path().join("st");
        let status = export(
            &base,
            Some(&ad),
            &st,
            &["--format", "safetensors", "--dtype", "f32"],
        );
        assert_eq!(status["status"], "ok");
        let files = ftkit_model::resolve(
            &ftkit_model::ModelSource::Dir(st.clone()),
            &ftkit_model::HubOptions::from_env(true),
        )
        .unwrap();
        let got = logits(&CausalLm::from_files(&files, DType::F32, &Device::Cpu).unwrap());
        assert!(
            max_diff(&got, &want) < 1e-4 * scale,
            "{spec:?}: {}",
            max_diff(&got, &want)
        );
        // Our loader reads it like any HF folder; generation_config lists the eos ids.
        let generation: Json = serde_json::from_str(
            &std::fs::read_to_string(st.join("generation_config.json")).unwrap(),
        )
        .unwrap();
        let cfg = ModelConfig::from_file(&base.join("config.json")).unwrap();
        assert_eq!(generation["eos_token_id"], cfg.eos_token_ids[0]);
        let report: Json =
            serde_json::from_str(&std::fs::read_to_string(st.join("export_report.json")).unwrap())
                .unwrap();
        assert_eq!(report["verify"]["tolerance"], 1e-4);
        assert!(report["adapter"]["sha256"].as_str().unwrap().len() == 64);

        let gg = d.path().join("gg");
        export(
            &base,
            Some(&ad),
            &gg,
            &["--format", "gguf", "--quant", "f32"],
        );
        let got =
            logits(&CausalLm::from_gguf(&gg.join("model.gguf"), DType::F32, &Device::Cpu).unwrap());
        assert!(
            max_diff(&got, &want) < 1e-4 * scale,
            "{spec:?}: {}",
            max_diff(&got, &want)
        );
    }
}

/// llama.cpp's converter permutes llama's q/k rows (reshape + swap axes, fixtures::llama_permute,
/// written independently of the exporter's row arithmetic); qwen2's are stored as they are.
#[test]
fn llama_q_and_k_rows_are_permuted_as_llama_cpp_does() {
    let d = tempfile::tempdir().unwrap();
    for spec in [TinySpec::llama(5), TinySpec::qwen2(5)] {
        let base = tiny_model(d.path(), &spec);
        let out = d.path().join(format!("{}-out", spec.arch.model_type()));
        export(&base, None, &out, &["--format", "gguf", "--quant", "f32"]);
        let st =
            candle_core::safetensors::load(base.join("model.safetensors"), &Device::Cpu).unwrap();
        let (content, mut r) = read_gguf(&out.join("model.gguf"));
        for (hf, g, heads) in [
            (
                "model.layers.1.self_attn.q_proj.weight",
                "blk.1.attn_q.weight",
                spec.num_attention_heads,
            ),
            (
                "model.layers.1.self_attn.k_proj.weight",
                "blk.1.attn_k.weight",
                spec.num_key_value_heads,
            ),
        ] {
            let stored = content
                .tensor(&mut r, g, &Device::Cpu)
                .unwrap()
                .dequantize(&Device::Cpu)
                .unwrap();
            let expect = match spec.arch {
                ftkit_model::Arch::Llama => llama_permute(&st[hf], heads).unwrap(),
                ftkit_model::Arch::Qwen2 => st[hf].clone(),
            };
            assert_eq!(max_diff(&stored, &expect), 0.0, "{g}");
            if spec.arch == ftkit_model::Arch::Llama {
                assert!(max_diff(&stored, &st[hf]) > 0.0, "{g} was not permuted");
            }
        }
    }
}

/// The metadata keys (values of the small ones) and the tensor directory of a merged tiny llama
/// at q8_0: what llama.cpp reads, pinned.
#[test]
fn gguf_keys_and_tensor_names_golden() {
    let d = tempfile::tempdir().unwrap();
    let base = tiny_model(d.path(), &TinySpec::llama(6));
    let ad = adapter(d.path(), &base, false);
    let out = d.path().join("out");
    export(
        &base,
        Some(&ad),
        &out,
        &["--format", "gguf", "--quant", "q8_0", "--name", "tiny"],
    );
    let (content, _) = read_gguf(&out.join("model.gguf"));
    let mut lines = vec![];
    let mut keys: Vec<&String> = content.metadata.keys().collect();
    keys.sort();
    for k in keys {
        let v = &content.metadata[k];
        let shown = match v {
            Value::Array(items) => format!("[{} items]", items.len()),
            Value::String(s) if s.len() > 60 => format!("<{} chars>", s.len()),
            v => format!("{v:?}"),
        };
        lines.push(format!("{k} = {shown}"));
    }
    let mut tensors: Vec<(&String, _)> = content.tensor_infos.iter().collect();
    tensors.sort_by_key(|(n, _)| n.as_str());
    for (n, info) in tensors {
        lines.push(format!("{n} {:?} {:?}", info.shape.dims(), info.ggml_dtype));
    }
    golden::check(
        &testdata("merge-export", "tiny-llama-q8_0.gguf.txt"),
        (lines.join("\n") + "\n").as_bytes(),
    );
}

/// The adapter GGUF holds A and B as PEFT stores them (B's q/k rows permuted for llama), alpha as
/// FLOAT32; read back, it is the adapter, and on the base it gives base + adapter's logits.
#[test]
fn adapter_gguf_reads_back_equal_to_the_adapter() {
    let d = tempfile::tempdir().unwrap();
    for rslora in [false, true] {
        let base = tiny_model(d.path(), &TinySpec::llama(8));
        let ad = adapter(d.path(), &base, rslora);
        let out = d.path().join(format!("ad{rslora}"));
        let status = export(&base, Some(&ad), &out, &["--format", "gguf-adapter"]);
        assert_eq!(status["verify"]["max_abs_diff"], 0.0);
        let (content, mut r) = read_gguf(&out.join("adapter.gguf"));
        let s = |k: &str| content.metadata[k].to_string().unwrap().clone();
        assert_eq!(
            (
                s("general.type"),
                s("adapter.type"),
                s("general.architecture")
            ),
            ("adapter".into(), "lora".into(), "llama".into())
        );
        let Value::F32(alpha) = content.metadata["adapter.lora.alpha"] else {
            panic!("alpha is not FLOAT32")
        };
        // llama.cpp scales by alpha / r: rsLoRA's alpha / sqrt(r) becomes alpha * sqrt(r) / r.
        assert_eq!(alpha, if rslora { 32.0 } else { 16.0 });
        let src = load_adapter(&ad, &Device::Cpu).unwrap();
        let p = "base_model.model.model.layers.0.self_attn";
        let a = content
            .tensor(&mut r, "blk.0.attn_q.weight.lora_a", &Device::Cpu)
            .unwrap();
        assert_eq!(a.shape().dims(), [4, 64]); // ne = [in, r], as llama.cpp checks
        assert_eq!(
            max_diff(
                &a.dequantize(&Device::Cpu).unwrap(),
                &src.tensors[&format!("{p}.q_proj.lora_A.weight")]
            ),
            0.0
        );
        let b = content
            .tensor(&mut r, "blk.0.attn_q.weight.lora_b", &Device::Cpu)
            .unwrap()
            .dequantize(&Device::Cpu)
            .unwrap();
        let expect = llama_permute(&src.tensors[&format!("{p}.q_proj.lora_B.weight")], 4).unwrap();
        assert_eq!(max_diff(&b, &expect), 0.0);
        assert_eq!(content.tensor_infos.len(), 2 * 7 * 2);
    }
}

#[test]
fn quantized_exports_pass_their_tolerance_and_keep_the_tokenizer() {
    let d = tempfile::tempdir().unwrap();
    // Real models' weights are small next to their width; the default fixture's (std 0.1 at width
    // 64) amplify rounding layer by layer, as no trained model does.
    let base = tiny_model(
        d.path(),
        &TinySpec {
            init_std: 0.02,
            ..TinySpec::qwen2(9)
        },
    );
    let ad = adapter(d.path(), &base, false);
    // 4-bit types: on SmolLM2 below (a random model's near-flat logits make argmax a coin toss).
    for quant in ["f16", "bf16", "q8_0"] {
        let out = d.path().join(quant);
        let status = export(
            &base,
            Some(&ad),
            &out,
            &["--format", "gguf", "--quant", quant],
        );
        let v = &status["verify"];
        assert!(
            v["relative"].as_f64().unwrap() <= v["tolerance"].as_f64().unwrap(),
            "{quant}: {v}"
        );
        assert!(
            v["top1_agreement"].as_f64().unwrap() >= v["top1_floor"].as_f64().unwrap(),
            "{quant}: {v}"
        );
        assert_eq!(v["tokenizer_ids_equal"], true, "{quant}");
        let report: Json =
            serde_json::from_str(&std::fs::read_to_string(out.join("export_report.json")).unwrap())
                .unwrap();
        println!("{quant}: {}", report["verify"]);
    }
}

#[test]
fn ollama_folder_has_a_modelfile_and_prints_the_create_command() {
    let d = tempfile::tempdir().unwrap();
    let base = tiny_model(
        d.path(),
        &TinySpec {
            init_std: 0.02,
            ..TinySpec::qwen2(10)
        },
    );
    let ad = adapter(d.path(), &base, false);
    let out = d.path().join("My Model");
    let status = export(
        &base,
        Some(&ad),
        &out,
        &["--format", "ollama", "--quant", "q8_0"],
    );
    assert_eq!(
        status["next"],
        format!(
            "ollama create my-model -f {}",
            out.join("Modelfile").display()
        )
    );
    let mf = std::fs::read_to_string(out.join("Modelfile")).unwrap();
    assert!(mf.starts_with("FROM ./model.gguf\nTEMPLATE \"\"\""), "{mf}");
    assert!(mf.contains("PARAMETER stop \"<|im_end|>\""), "{mf}");
    // Qwen's template writes its own system prompt when there is none: Ollama's SYSTEM.
    assert!(mf.contains("SYSTEM \"\"\"You are Qwen, created by Alibaba Cloud. You are a helpful assistant.\"\"\""), "{mf}");

    // The adapter kept apart: FROM the base converted beside it, ADAPTER the adapter GGUF.
    let out2 = d.path().join("apart");
    let status = export(
        &base,
        Some(&ad),
        &out2,
        &[
            "--format",
            "ollama",
            "--ollama-adapter",
            "--quant",
            "f32",
            "--system",
            "Be brief.",
        ],
    );
    let mf = std::fs::read_to_string(out2.join("Modelfile")).unwrap();
    assert!(
        mf.starts_with("FROM ./base.gguf\nADAPTER ./adapter.gguf\n"),
        "{mf}"
    );
    assert!(mf.ends_with("SYSTEM \"\"\"Be brief.\"\"\"\n"), "{mf}");
    assert!(
        status["verify"]["relative"].as_f64().unwrap() < 1e-4,
        "{status}"
    );
}

#[test]
fn a_wrong_base_fails_naming_the_layer_and_writes_nothing() {
    let d = tempfile::tempdir().unwrap();
    let small = tiny_model(d.path(), &TinySpec::qwen2(11));
    let ad = adapter(d.path(), &small, false);
    let other = d.path().join("other");
    write_tiny_model(
        &other,
        &TinySpec {
            num_hidden_layers: 1,
            ..TinySpec::qwen2(11)
        },
    )
    .unwrap();
    let out = d.path().join("out");
    let o = Run::new(BIN)
        .arg("--base")
        .arg(&other)
        .arg("--adapter")
        .arg(&ad)
        .arg("--out-dir")
        .arg(&out)
        .run()
        .expect_code(1);
    assert!(
        o.stderr.contains("model.layers.1.self_attn.q_proj"),
        "{}",
        o.stderr
    );
    assert!(o.stdout.is_empty());
    assert!(!out.exists() || std::fs::read_dir(&out).unwrap().next().is_none());
    // A usage error: the adapter format without an adapter.
    Run::new(BIN)
        .arg("--base")
        .arg(&small)
        .args(["--format", "gguf-adapter", "--out-dir"])
        .arg(&out)
        .run()
        .expect_code(2);
    // The output may not be an input.
    Run::new(BIN)
        .arg("--base")
        .arg(&small)
        .arg("--out-dir")
        .arg(&small)
        .run()
        .expect_code(2);
}

#[test]
fn shards_above_the_shard_size_with_an_index() {
    let d = tempfile::tempdir().unwrap();
    let base = tiny_model(d.path(), &TinySpec::llama(12));
    let out = d.path().join("st");
    let status = export(
        &base,
        None,
        &out,
        &[
            "--format",
            "safetensors",
            "--dtype",
            "f16",
            "--shard-size",
            "100KB",
        ],
    );
    let files: Vec<&str> = status["files"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|f| f.as_str())
        .collect();
    let shards: Vec<&&str> = files
        .iter()
        .filter(|f| f.ends_with(".safetensors"))
        .collect();
    assert!(shards.len() > 1, "{files:?}");
    assert!(files.contains(&"model.safetensors.index.json"));
    for s in &shards {
        assert!(std::fs::metadata(out.join(s)).unwrap().len() < 200_000 || shards.len() == 1);
    }
    assert!(status["verify"]["relative"].as_f64().unwrap() < 2e-2);
}

/// The real model: SmolLM2's own GGUF (Q4_1) converted to a Q8_0 Ollama model; its tokenizer keys
/// are carried over and give the same ids; the chat template is ChatML with SmolLM's system prompt.
#[test]
fn smollm2_gguf_to_ollama() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("smollm2");
    let status = export(
        &ftkit_testkit::smollm2(),
        None,
        &out,
        &["--format", "ollama", "--quant", "q8_0"],
    );
    assert_eq!(status["verify"]["tokenizer_ids_equal"], true, "{status}");
    assert!(
        status["verify"]["top1_agreement"].as_f64().unwrap() > 0.9,
        "{status}"
    );
    let mf = std::fs::read_to_string(out.join("Modelfile")).unwrap();
    golden::check(
        &testdata("merge-export", "smollm2.Modelfile"),
        mf.as_bytes(),
    );
    let (content, _) = read_gguf(&out.join("model.gguf"));
    assert_eq!(
        content.metadata["tokenizer.ggml.pre"].to_string().unwrap(),
        "smollm"
    );
    assert_eq!(content.metadata["general.file_type"].to_u32().unwrap(), 7);

    // 4-bit: within the q4_k limits; SmolLM2's 576-column matrices take llama-quantize's Q5_0
    // fallback (ffn_down's 1536 columns fit Q4_K), its tied embedding Q8_0.
    let q4 = d.path().join("q4");
    let status = export(
        &ftkit_testkit::smollm2(),
        None,
        &q4,
        &["--format", "gguf", "--quant", "q4_k"],
    );
    let report: Json =
        serde_json::from_str(&std::fs::read_to_string(q4.join("export_report.json")).unwrap())
            .unwrap();
    assert_eq!(
        report["tensors"]["types"]["q5_0"],
        30 * 6,
        "{}",
        report["tensors"]["types"]
    );
    assert_eq!(report["tensors"]["types"]["q4k"], 30);
    assert_eq!(report["tensors"]["types"]["q8_0"], 1);
    assert!(
        status["verify"]["top1_agreement"].as_f64().unwrap() >= 0.5,
        "{status}"
    );
}

#[test]
fn man_page() {
    ftkit_testkit::man::check(ft_merge_export::Args::command());
}

/// `--base ORG/NAME` through hf-hub against a loopback server speaking the hub's protocol
/// (HF_ENDPOINT, HF_HOME): the export is the same as from the folder, and the token appears in no
/// output.
#[test]
fn a_hub_id_base_exports_like_its_folder_and_keeps_the_token_out() {
    use ftkit_testkit::http::Server;
    let d = tempfile::tempdir().unwrap();
    let base = tiny_model(d.path(), &TinySpec::qwen2(13));
    let files: Vec<(String, Vec<u8>)> = std::fs::read_dir(&base)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    let refs: Vec<(&str, &[u8])> = files
        .iter()
        .map(|(n, b)| (n.as_str(), b.as_slice()))
        .collect();
    let server = Server::start();
    server.put_hub_repo("model", "org/tiny", &refs);
    let token = "hf_secret_merge_export_token";
    let hub_out = d.path().join("hub");
    let o = Run::new(BIN)
        .args([
            "--base",
            "org/tiny",
            "--format",
            "gguf",
            "--quant",
            "f32",
            "--out-dir",
        ])
        .arg(&hub_out)
        .env("HF_ENDPOINT", &server.url)
        .env("HF_HOME", d.path().join("hf-home"))
        .env("HF_TOKEN", token)
        .run()
        .expect_code(0);
    let dir_out = d.path().join("dir");
    export(
        &base,
        None,
        &dir_out,
        &["--format", "gguf", "--quant", "f32", "--name", "hub"],
    );
    assert_eq!(
        std::fs::read(hub_out.join("model.gguf")).unwrap(),
        std::fs::read(dir_out.join("model.gguf")).unwrap()
    );
    let report = std::fs::read_to_string(hub_out.join("export_report.json")).unwrap();
    for text in [o.stdout_str(), o.stderr.as_str(), &report] {
        assert!(!text.contains(token), "{text}");
    }
}
