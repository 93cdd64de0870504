//! Local generation: KV-cache forward against full recomputation, batching, sampling, stop
//! strings, EOS, adapters and logits processors, on the tiny fixture models (CPU, F32).

use anyhow::{Result, anyhow};
use candle_core::{DType, Device, IndexOp, Tensor};
use candle_nn::VarMap;
use ftkit_model::fixtures::{CORPUS, TinySpec, write_tiny_model};
use ftkit_model::generate::{
    FinishReason, GenOptions, Generator, KvCache, LogitsProcessor, Sampling, sequence_seed,
};
use ftkit_model::lora::{LoraConfig, parse_targets};
use ftkit_model::model::{CausalLm, ForwardOpts};
use ftkit_model::peft::{self, AdapterConfig};
use ftkit_model::{ChatMessage, ChatTemplate, ModelSource, TokenizerConfig, resolve};
use tokenizers::Tokenizer;

struct Fixture {
    _dir: tempfile::TempDir,
    files: ftkit_model::ModelFiles,
    model: CausalLm,
    tok: Tokenizer,
}

fn fixture(spec: &TinySpec) -> Result<Fixture> {
    let dir = tempfile::tempdir()?;
    write_tiny_model(dir.path(), spec)?;
    let files = resolve(
        &ModelSource::Dir(dir.path().to_path_buf()),
        &Default::default(),
    )?;
    let model = CausalLm::from_files(&files, DType::F32, &Device::Cpu)?;
    let tok = ftkit_model::load_tokenizer(&files.tokenizer)?;
    Ok(Fixture {
        _dir: dir,
        files,
        model,
        tok,
    })
}

/// Prompts of different lengths from the fixture corpus.
fn prompts(tok: &Tokenizer, n: usize) -> Result<Vec<Vec<u32>>> {
    CORPUS
        .lines()
        .filter(|l| !l.trim().is_empty())
        .take(n)
        .enumerate()
        .map(|(i, line)| {
            let words: Vec<&str> = line.split_whitespace().take(3 + 4 * i).collect();
            let enc = tok
                .encode(words.join(" "), false)
                .map_err(|e| anyhow!("{e}"))?;
            Ok(enc.get_ids().to_vec())
        })
        .collect()
}

fn greedy(max_new_tokens: usize) -> GenOptions {
    GenOptions {
        max_new_tokens,
        ..GenOptions::default()
    }
}

fn argmax(row: &[f32]) -> u32 {
    let mut best = 0;
    for (i, v) in row.iter().enumerate() {
        if *v > row[best] {
            best = i;
        }
    }
    best as u32
}

fn last_logits_full(model: &CausalLm, ids: &[u32]) -> Result<Vec<f32>> {
    let t = Tensor::new(ids, &Device::Cpu)?.unsqueeze(0)?;
    let logits = model.forward(&t, &ForwardOpts::default())?;
    Ok(logits.i((0, ids.len() - 1))?.to_vec1()?)
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn greedy_with_kv_cache_equals_recomputing_the_whole_sequence() -> Result<()> {
    for spec in [TinySpec::qwen2(21), TinySpec::llama(22)] {
        let f = fixture(&spec)?;
        let prompt = prompts(&f.tok, 2)?.remove(1);
        let g = Generator::new(&f.model, &f.tok, Vec::new());
        let out = g.generate(std::slice::from_ref(&prompt), &greedy(24), None)?;
        let cached = &out[0].tokens;
        assert_eq!(cached.len(), 24);
        assert_eq!(out[0].finish, FinishReason::Length);
        assert_eq!(out[0].prompt_tokens, prompt.len());
        assert_eq!(out[0].completion_tokens, 24);

        // The training forward, whole sequence each step.
        let mut ids = prompt.clone();
        let mut cache = KvCache::new(&f.model, vec![0], prompt.len() + 24)?;
        let mut step_in = prompt.clone();
        for _ in 0..24 {
            let full = last_logits_full(&f.model, &ids)?;
            let t = Tensor::new(step_in.as_slice(), &Device::Cpu)?.unsqueeze(0)?;
            let inc: Vec<f32> = f.model.forward_cached(&t, &mut cache)?.i(0)?.to_vec1()?;
            let scale = full.iter().fold(0f32, |m, v| m.max(v.abs()));
            assert!(
                max_abs_diff(&full, &inc) <= 1e-4 * scale.max(1.0),
                "{:?}: cached logits differ by {}",
                spec.arch,
                max_abs_diff(&full, &inc)
            );
            let next = argmax(&full);
            ids.push(next);
            step_in = vec![next];
        }
        assert_eq!(&ids[prompt.len()..], cached.as_slice(), "{:?}", spec.arch);
    }
    Ok(())
}

#[test]
fn batched_greedy_equals_one_prompt_at_a_time() -> Result<()> {
    let f = fixture(&TinySpec::llama(31))?;
    let ps = prompts(&f.tok, 4)?;
    let lens: Vec<usize> = ps.iter().map(Vec::len).collect();
    let mut distinct = lens.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(distinct.len(), lens.len(), "{lens:?}");
    let g = Generator::new(&f.model, &f.tok, Vec::new());
    let alone: Vec<_> = ps
        .iter()
        .map(|p| {
            Ok(g.generate(std::slice::from_ref(p), &greedy(20), None)?
                .remove(0))
        })
        .collect::<Result<_>>()?;
    let batched = g.generate(&ps, &greedy(20), None)?;
    assert_eq!(batched, alone);

    // With an EOS that the first prompt emits early: its row leaves the batch, the others go
    // on (exercising KvCache::retain), and each still equals its solo run.
    let first = &alone[0].tokens;
    let j = (3..first.len())
        .find(|&j| !first[..j].contains(&first[j]))
        .ok_or_else(|| anyhow!("no fresh token in {first:?}"))?;
    let eos = vec![first[j]];
    let g = Generator::new(&f.model, &f.tok, eos);
    let alone: Vec<_> = ps
        .iter()
        .map(|p| {
            Ok(g.generate(std::slice::from_ref(p), &greedy(20), None)?
                .remove(0))
        })
        .collect::<Result<_>>()?;
    assert_eq!(alone[0].tokens, first[..j]);
    assert_eq!(alone[0].finish, FinishReason::Eos);
    assert_eq!(alone[0].completion_tokens, j + 1);
    assert!(alone.iter().any(|a| a.finish == FinishReason::Length));
    assert_eq!(g.generate(&ps, &greedy(20), None)?, alone);
    Ok(())
}

fn sampled(seed: u64) -> GenOptions {
    GenOptions {
        max_new_tokens: 24,
        sampling: Sampling {
            temperature: 1.0,
            top_p: 0.95,
            top_k: 50,
            ..Sampling::default()
        },
        seed,
        ..GenOptions::default()
    }
}

#[test]
fn seeded_sampling_is_reproducible_and_seeds_differ() -> Result<()> {
    let f = fixture(&TinySpec::qwen2(41))?;
    let ps = prompts(&f.tok, 3)?;
    let g = Generator::new(&f.model, &f.tok, Vec::new());
    let a = g.generate(&ps, &sampled(7), None)?;
    assert_eq!(a, g.generate(&ps, &sampled(7), None)?);
    let b = g.generate(&ps, &sampled(8), None)?;
    assert_ne!(a[0].tokens, b[0].tokens);
    // Greedy would give one sequence; sampling another.
    assert_ne!(
        a[0].tokens,
        g.generate(&ps[..1], &greedy(24), None)?[0].tokens
    );
    // The same prompts in the same stream: two different prompts with one seed differ too.
    assert_ne!(a[1].tokens, a[2].tokens);
    // A prompt's stream does not depend on the batch: alone with its seed, same output.
    let seed2 = sequence_seed(7, 2);
    let solo = g.generate_seeded(&ps[2..], &[seed2], &sampled(0), None)?;
    assert_eq!(solo[0], a[2]);
    Ok(())
}

/// Byte lengths of the decoded prefixes of `tokens` (`len[k]` = text of the first k tokens).
fn prefix_lengths(tok: &Tokenizer, tokens: &[u32]) -> Result<Vec<usize>> {
    (0..=tokens.len())
        .map(|k| {
            Ok(tok
                .decode(&tokens[..k], true)
                .map_err(|e| anyhow!("{e}"))?
                .len())
        })
        .collect()
}

#[test]
fn stop_strings_spanning_tokens_end_generation_and_are_cut() -> Result<()> {
    let f = fixture(&TinySpec::qwen2(51))?;
    let ps = prompts(&f.tok, 2)?;
    let g = Generator::new(&f.model, &f.tok, Vec::new());
    let first = g.generate(&ps[1..], &greedy(30), None)?.remove(0);
    let text = &first.text;
    let lens = prefix_lengths(&f.tok, &first.tokens)?;
    // A stop string from the end of token k-1 to the start of token k (two bytes each side),
    // at a place where the decoded prefixes are prefixes of the text.
    let (k, stop) = (2..first.tokens.len())
        .find_map(|k| {
            let (a, m, b) = (lens[k - 1], lens[k], lens[k + 1]);
            let ok = m >= a + 2 && b >= m + 2 && text.is_char_boundary(m - 2);
            let s = ok.then(|| text.get(m - 2..m + 2)).flatten()?;
            Some((k, s.to_string()))
        })
        .ok_or_else(|| anyhow!("no multi-byte neighbouring tokens in {text:?}"))?;
    let at = text
        .find(&stop)
        .ok_or_else(|| anyhow!("stop not in text"))?;
    let end = at + stop.len();
    let n = lens
        .iter()
        .position(|&l| l >= end)
        .ok_or_else(|| anyhow!("no prefix covers the stop"))?;
    assert!(n <= k + 1);
    let opts = GenOptions {
        stop: vec!["never-generated-§".into(), stop.clone()],
        ..greedy(30)
    };
    let out = g.generate(&ps[1..], &opts, None)?.remove(0);
    assert_eq!(out.finish, FinishReason::Stop);
    assert_eq!(out.text, text[..at], "stop {stop:?}");
    assert_eq!(out.tokens, first.tokens[..n]);
    assert!(!out.text.contains(&stop));

    // A stop string at the very start of the completion: empty text.
    let opts = GenOptions {
        stop: vec![text[..1].to_string()],
        ..greedy(30)
    };
    let out = g.generate(&ps[1..], &opts, None)?.remove(0);
    assert_eq!((out.text.as_str(), out.finish), ("", FinishReason::Stop));
    Ok(())
}

#[test]
fn eos_ids_end_generation_and_zero_new_tokens_is_empty() -> Result<()> {
    let f = fixture(&TinySpec::llama(61))?;
    let ps = prompts(&f.tok, 1)?;
    let g = Generator::new(&f.model, &f.tok, Vec::new());
    let first = g.generate(&ps, &greedy(16), None)?.remove(0).tokens;
    let j = (1..first.len())
        .find(|&j| !first[..j].contains(&first[j]))
        .ok_or_else(|| anyhow!("no fresh token in {first:?}"))?;
    // Several EOS ids: the one never generated is harmless.
    let unused = (0..400u32)
        .find(|t| !first.contains(t))
        .ok_or_else(|| anyhow!("vocab"))?;
    let g = Generator::new(&f.model, &f.tok, vec![unused, first[j]]);
    let out = g.generate(&ps, &greedy(16), None)?.remove(0);
    assert_eq!(out.finish, FinishReason::Eos);
    assert_eq!(out.tokens, first[..j]);
    assert_eq!(out.completion_tokens, j + 1);
    assert_eq!(
        out.text,
        f.tok
            .decode(&first[..j], true)
            .map_err(|e| anyhow!("{e}"))?
    );

    let none = g.generate(&ps, &greedy(0), None)?.remove(0);
    assert_eq!(
        (none.tokens.len(), none.completion_tokens, none.finish),
        (0, 0, FinishReason::Length)
    );
    assert!(g.generate(&[vec![]], &greedy(4), None).is_err());
    Ok(())
}

#[test]
fn an_attached_adapter_changes_the_logits_as_the_training_forward_does() -> Result<()> {
    let f = fixture(&TinySpec::qwen2(71))?;
    let prompt = prompts(&f.tok, 3)?.remove(2);
    let ids = Tensor::new(prompt.as_slice(), &Device::Cpu)?.unsqueeze(0)?;
    let cached = |m: &CausalLm| -> Result<Vec<f32>> {
        let mut cache = KvCache::new(m, vec![0], prompt.len())?;
        Ok(m.forward_cached(&ids, &mut cache)?.i(0)?.to_vec1()?)
    };
    let base = cached(&f.model)?;

    // An adapter with non-zero B (a freshly initialised one is a no-op), saved and loaded as
    // ft-train-lora's output is.
    let mut trained = f.model.clone();
    let lc = LoraConfig {
        rank: 4,
        alpha: 8.0,
        dropout: 0.0,
        rslora: false,
        targets: parse_targets("all-linear")?,
        seed: 3,
    };
    trained.attach_lora(&lc, &VarMap::new())?;
    for (i, (_, v)) in trained.lora_params().into_iter().enumerate() {
        let r = ftkit_model::rng::Rng::new(i as u64).normal_vec(v.elem_count(), 0.0, 0.2);
        v.set(&Tensor::from_vec(r, v.shape(), &Device::Cpu)?)?;
    }
    let tensors: Vec<(String, Tensor)> = trained
        .lora_params()
        .into_iter()
        .map(|(k, v)| (k, v.as_tensor().clone()))
        .collect();
    let adir = tempfile::tempdir()?;
    peft::save_adapter(adir.path(), &AdapterConfig::from_lora(&lc, None), &tensors)?;
    let adapter = peft::load_adapter(adir.path(), &Device::Cpu)?;
    let mut with = CausalLm::from_files(&f.files, DType::F32, &Device::Cpu)?;
    assert_eq!(with.attach_adapter(&adapter, &VarMap::new())?, 14);

    let adapted = cached(&with)?;
    let full = last_logits_full(&with, &prompt)?;
    let scale = full.iter().fold(0f32, |m, v| m.max(v.abs()));
    assert!(max_abs_diff(&adapted, &full) <= 1e-4 * scale.max(1.0));
    assert!(
        max_abs_diff(&adapted, &base) > 0.1,
        "adapter left the logits unchanged"
    );
    Ok(())
}

/// Allows only a fixed set of tokens and records what it is told.
struct OnlyThese {
    allowed: Vec<u32>,
    seen: Vec<(usize, u32)>,
    calls: usize,
}

impl LogitsProcessor for OnlyThese {
    fn mask(&mut self, _seq: usize, _generated: &[u32], allowed: &mut [bool]) -> Result<()> {
        self.calls += 1;
        for (id, a) in allowed.iter_mut().enumerate() {
            *a = self.allowed.contains(&(id as u32));
        }
        Ok(())
    }

    fn accept(&mut self, seq: usize, token: u32) -> Result<()> {
        self.seen.push((seq, token));
        Ok(())
    }
}

#[test]
fn a_logits_processor_restricts_every_token_and_is_told_the_choices() -> Result<()> {
    let f = fixture(&TinySpec::llama(81))?;
    let ps = prompts(&f.tok, 3)?;
    let g = Generator::new(&f.model, &f.tok, Vec::new());
    let free = g.generate(&ps, &greedy(12), None)?;
    // A set that greedy decoding alone does not stay in.
    let set = vec![7u32, 100, 250];
    assert!(
        free.iter()
            .any(|o| o.tokens.iter().any(|t| !set.contains(t)))
    );
    let sampled12 = GenOptions {
        max_new_tokens: 12,
        ..sampled(5)
    };
    for opts in [greedy(12), sampled12] {
        let mut p = OnlyThese {
            allowed: set.clone(),
            seen: Vec::new(),
            calls: 0,
        };
        let out = g.generate(&ps, &opts, Some(&mut p))?;
        for (i, o) in out.iter().enumerate() {
            assert_eq!(o.tokens.len(), 12);
            assert!(o.tokens.iter().all(|t| set.contains(t)), "{:?}", o.tokens);
            let told: Vec<u32> = p.seen.iter().filter(|s| s.0 == i).map(|s| s.1).collect();
            assert_eq!(told, o.tokens);
        }
        assert_eq!(p.calls, 3 * 12);
    }
    // Allowing nothing is an error, not a silent pick.
    let mut none = OnlyThese {
        allowed: Vec::new(),
        seen: Vec::new(),
        calls: 0,
    };
    assert!(g.generate(&ps, &greedy(4), Some(&mut none)).is_err());
    Ok(())
}

#[test]
fn chat_prompts_end_with_the_generation_prompt() -> Result<()> {
    let f = fixture(&TinySpec::qwen2(91))?;
    let tcfg = TokenizerConfig::load(
        f.files.tokenizer_config.as_deref(),
        f.files.chat_template.as_deref(),
    )?;
    let tmpl = ChatTemplate::from_config(&tcfg)?;
    let g = Generator::new(&f.model, &f.tok, Vec::new());
    let ids = g.encode_chat(&tmpl, &[ChatMessage::new("user", "What is a chunk?")])?;
    let text = f.tok.decode(&ids, false).map_err(|e| anyhow!("{e}"))?;
    assert_eq!(
        text,
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n\
         <|im_start|>user\nWhat is a chunk?<|im_end|>\n<|im_start|>assistant\n"
    );
    let eos = ftkit_model::generate::default_eos_ids(&f.model, &f.tok, Some(&tcfg));
    assert_eq!(
        eos,
        vec![f.tok.token_to_id("<|im_end|>").unwrap_or(u32::MAX)]
    );
    // Runs end to end with the chat prompt.
    let out = Generator::new(&f.model, &f.tok, eos).generate(&[ids], &greedy(5), None)?;
    assert!(out[0].completion_tokens >= 1);
    Ok(())
}

#[test]
fn threads_option_gives_the_same_tokens() -> Result<()> {
    let f = fixture(&TinySpec::qwen2(95))?;
    let ps = prompts(&f.tok, 2)?;
    let g = Generator::new(&f.model, &f.tok, Vec::new());
    let one = GenOptions {
        threads: Some(1),
        ..greedy(10)
    };
    assert_eq!(
        g.generate(&ps, &one, None)?,
        g.generate(&ps, &greedy(10), None)?
    );
    let zero = GenOptions {
        threads: Some(0),
        ..greedy(10)
    };
    assert!(g.generate(&ps, &zero, None).is_err());
    Ok(())
}
