//! The `local` backend: a model on this machine (GGUF file, safetensors folder or hub id, ± a PEFT
//! adapter), run by `ftkit_model`'s KV-cache generator. Nothing leaves the machine.
//!
//! Replies that must be JSON (QA pairs, summaries, judgements) are decoded under a
//! [`JsonConstraint`]: every token keeps the text a prefix of the expected object and leaves room to
//! close it within `--max-tokens`, so even a 135M model always answers with JSON the parser takes.
//! A judgement's scores are then replaced by the probability-weighted mean of the scores the model
//! could have written ([`crate::judge_scores`]).
//! Free text (ft-generate) is decoded as is, with stop strings and EOS.
//!
//! The tools' worker threads (`--concurrency`) each block in [`Backend::send`]; one engine thread
//! owns the model and decodes the requests waiting at that moment together, as one batch (up to
//! `--concurrency` of them): the cores stay busy and a batch of 8 decodes several times more
//! tokens per second than one prompt. A batch forms from the requests that arrive within
//! [`GATHER`] of its first one; a request's tokens do not depend on which others share its batch
//! (greedy and seeded sampling alike, see `ftkit_model::generate`), up to float rounding that
//! batching may change and that can flip a near tie (`--concurrency 1` decodes one at a time).

use crate::backend::{Backend, CallError, Params, Reply, Request, Task, Usage};
use crate::judge_scores::{ScoreTokens, pending_key, reweigh};
use anyhow::{Context, Result};
use candle_core::{DType, Device};
use ftkit_model::Pretrained;
use ftkit_model::chat::ChatMessage;
use ftkit_model::constrain::{ConstraintState, JsonConstraint, Shape, TokenBytes};
use ftkit_model::generate::{
    FinishReason, GenOptions, Generation, Generator, LogitsProcessor, Sampling, sequence_seed,
};
use ftkit_model::source::HubOptions;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a batch waits after its first request for others: the workers' requests arrive within
/// microseconds of each other, a prompt's decoding takes seconds.
pub const GATHER: Duration = Duration::from_millis(20);

/// Longest string (in bytes of its JSON body) of a constrained reply: questions, answers, summaries.
const MAX_STRING: usize = 1200;
/// Longest judge rationale.
const MAX_RATIONALE: usize = 400;

/// Settings of the `local` backend.
#[derive(Clone, Debug)]
pub struct LocalConfig {
    /// `FILE.gguf`, a folder, or `ORG/NAME[@REV]`.
    pub model: String,
    pub adapter: Option<PathBuf>,
    pub params: Params,
    pub device: Device,
    pub dtype: DType,
    /// Most requests decoded together.
    pub max_batch: usize,
    pub hub: HubOptions,
}

/// A request the engine thread decodes.
struct Pending {
    prompt: Vec<u32>,
    /// The reply's JSON shape, `None` for free text.
    constraint: Option<Arc<JsonConstraint>>,
    /// A judgement: its scores become probability-weighted ([`crate::judge_scores`]).
    weigh: bool,
    seed: u64,
    answer: mpsc::Sender<Result<Decoded, String>>,
}

/// The engine's answer to one request.
struct Decoded {
    generation: Generation,
    /// A JSON reply's bytes: its text, rather than the tokenizer's decoding (which may clean up
    /// spaces).
    json: Option<Vec<u8>>,
}

pub struct Local {
    /// What output records name: the model file or folder name (or hub id), `+` the adapter's.
    name: String,
    /// The model's and the adapter's content digests: the cache key changes when either does.
    identity: Value,
    params: Params,
    /// Shared with the engine thread: templates and token counts are done on the callers' threads.
    lm: Arc<Pretrained>,
    vocab: TokenBytes,
    constraints: Mutex<HashMap<String, Arc<JsonConstraint>>>,
    queue: Mutex<Option<mpsc::Sender<Pending>>>,
    engine: Option<std::thread::JoinHandle<()>>,
    context: usize,
}

/// A file's or folder's last path component, for output records (never the whole path: records
/// travel, and paths may hold user names).
fn short_name(spec: &str) -> String {
    let trimmed = spec.trim_end_matches('/');
    std::path::Path::new(trimmed)
        .file_name()
        .filter(|_| std::path::Path::new(trimmed).exists())
        .map_or_else(|| trimmed.to_string(), |n| n.to_string_lossy().into_owned())
}

/// SHA-256 over the adapter folder's two PEFT files.
fn adapter_digest(dir: &std::path::Path) -> Result<String> {
    let mut lines = String::new();
    for f in ["adapter_config.json", "adapter_model.safetensors"] {
        let p = dir.join(f);
        lines.push_str(&format!("{f}\t{}\n", ftkit_core::id::sha256_file(&p)?));
    }
    Ok(ftkit_core::id::sha256_hex(lines.as_bytes()))
}

impl Local {
    /// Loads the model (and adapter) and starts the engine thread.
    pub fn new(cfg: LocalConfig) -> Result<Self> {
        let mut lm = Pretrained::load(&cfg.model, &cfg.hub, cfg.dtype, &cfg.device)?;
        // A GGUF's linear layers multiply by their quantized blocks, as llama.cpp does.
        lm.quantize_for_inference()?;
        let mut name = short_name(&cfg.model);
        let mut identity = json!({"model": lm.sha256});
        if let Some(dir) = &cfg.adapter {
            if !dir.is_dir() {
                anyhow::bail!("--adapter {}: not a folder", dir.display());
            }
            let adapter = ftkit_model::peft::load_adapter(dir, &cfg.device)?;
            lm.model
                .attach_adapter(&adapter, &candle_nn::VarMap::new())
                .with_context(|| format!("--adapter {}", dir.display()))?;
            name = format!("{name}+{}", short_name(&dir.to_string_lossy()));
            identity["adapter"] = json!(adapter_digest(dir)?);
        }
        let eos = lm.eos_ids();
        let vocab = TokenBytes::from_tokenizer(&lm.tokenizer, &eos)?;
        let scores = ScoreTokens::new(&vocab);
        let context = lm.model.config.max_position_embeddings;
        let lm = Arc::new(lm);
        let (tx, rx) = mpsc::channel::<Pending>();
        let engine = {
            let lm = Arc::clone(&lm);
            let (params, max_batch) = (cfg.params.clone(), cfg.max_batch.max(1));
            std::thread::Builder::new()
                .name("ftkit-local".into())
                .spawn(move || engine(&lm, eos, &scores, &params, max_batch, &rx))
                .context("cannot start the local model's thread")?
        };
        Ok(Self {
            name,
            identity,
            params: cfg.params,
            lm,
            vocab,
            constraints: Mutex::default(),
            queue: Mutex::new(Some(tx)),
            engine: Some(engine),
            context,
        })
    }

    /// The JSON shape a task's reply must take (`None`: free text).
    fn shape(task: &Task) -> Option<(String, Shape)> {
        match task {
            Task::Qa { n, .. } => Some((format!("qa_pairs/{n}"), Shape::qa_pairs(*n, MAX_STRING))),
            Task::Summary { .. } => Some((
                "summary".into(),
                Shape::object(&[("summary", Shape::wordy_string(MAX_STRING))]),
            )),
            Task::Judge { .. } => Some((
                "judgement/weighted".into(),
                Shape::judge_scores(MAX_RATIONALE),
            )),
            Task::Generate { .. } | Task::Describe { .. } => None,
        }
    }

    /// The compiled constraint of a shape, built once per run.
    fn constraint(&self, key: &str, shape: &Shape) -> Result<Arc<JsonConstraint>, CallError> {
        let mut map = self
            .constraints
            .lock()
            .map_err(|_| CallError::Fatal("local backend: a thread panicked".into()))?;
        if let Some(c) = map.get(key) {
            return Ok(Arc::clone(c));
        }
        let c = JsonConstraint::new(shape, &self.vocab)
            .map_err(|e| CallError::Fatal(format!("local backend: {e:#}")))?;
        if c.min_tokens() > self.params.max_tokens as usize {
            return Err(CallError::Fatal(format!(
                "--max-tokens {} is below the {} tokens the shortest {key} reply takes",
                self.params.max_tokens,
                c.min_tokens()
            )));
        }
        map.insert(key.to_string(), Arc::clone(&c));
        Ok(c)
    }

    fn prompt(&self, req: &Request) -> Result<Vec<u32>, CallError> {
        let msgs: Vec<ChatMessage> = req
            .messages
            .iter()
            .map(|m| ChatMessage::new(&m.role, &m.content))
            .collect();
        let text = self
            .lm
            .template
            .render(&msgs, true)
            .map_err(|e| CallError::Item(format!("chat template: {e:#}")))?;
        let ids = self
            .lm
            .tokenizer
            .encode(text, false)
            .map_err(|e| CallError::Item(format!("tokenizer: {e}")))?
            .get_ids()
            .to_vec();
        let need = ids.len() + self.params.max_tokens as usize;
        if need > self.context {
            return Err(CallError::Item(format!(
                "the prompt ({} tokens) and --max-tokens {} exceed the model's context of {} tokens",
                ids.len(),
                self.params.max_tokens,
                self.context
            )));
        }
        Ok(ids)
    }
}

impl Drop for Local {
    fn drop(&mut self) {
        // Closing the queue ends the engine's loop.
        if let Ok(mut q) = self.queue.lock() {
            q.take();
        }
        if let Some(e) = self.engine.take() {
            let _ = e.join();
        }
    }
}

impl Backend for Local {
    fn name(&self) -> &'static str {
        "local"
    }

    fn model(&self) -> &str {
        &self.name
    }

    fn body(&self, req: &Request) -> Option<Vec<u8>> {
        let body = json!({
            "backend": "local",
            "identity": self.identity,
            "messages": req.messages,
            "shape": Self::shape(&req.task).map(|(k, _)| k),
            "params": self.params(req),
        });
        serde_json::to_vec(&body).ok()
    }

    fn params(&self, req: &Request) -> Value {
        let p = &self.params;
        let mut params = json!({
            "temperature": p.temperature,
            "max_tokens": p.max_tokens,
            "seed": p.seed.wrapping_add(u64::from(req.attempt)),
            "response_format": if Self::shape(&req.task).is_some() { "constrained_json" } else { "none" },
        });
        if let Some(obj) = params.as_object_mut() {
            p.insert_optional(obj);
        }
        params
    }

    fn send(&self, req: &Request, _body: Option<&[u8]>) -> Result<Reply, CallError> {
        if matches!(req.task, Task::Describe { .. }) {
            return Err(CallError::Fatal(
                "the local backend has no vision model: describe images through an \
                 OpenAI-compatible endpoint (--base-url)"
                    .into(),
            ));
        }
        let prompt = self.prompt(req)?;
        let constraint = match Self::shape(&req.task) {
            Some((key, shape)) => Some(self.constraint(&key, &shape)?),
            None => None,
        };
        let (answer, replies) = mpsc::channel();
        let pending = Pending {
            prompt,
            constraint,
            weigh: matches!(req.task, Task::Judge { .. }),
            seed: sequence_seed(self.params.seed.wrapping_add(u64::from(req.attempt)), 0),
            answer,
        };
        let gone = || CallError::Fatal("local backend: the model's thread stopped".into());
        self.queue
            .lock()
            .map_err(|_| gone())?
            .as_ref()
            .ok_or_else(gone)?
            .send(pending)
            .map_err(|_| gone())?;
        let Decoded { generation, json } = replies
            .recv()
            .map_err(|_| gone())?
            .map_err(|e| CallError::Item(format!("local model: {e}")))?;
        let text = match json {
            Some(bytes) => String::from_utf8(bytes)
                .map_err(|_| CallError::Item("local model: the reply is not UTF-8".into()))?,
            None => generation.text,
        };
        Ok(Reply {
            text,
            usage: Usage {
                prompt_tokens: generation.prompt_tokens as u64,
                completion_tokens: generation.completion_tokens as u64,
            },
            finish_reason: Some(
                match generation.finish {
                    FinishReason::Eos | FinishReason::Stop => "stop",
                    FinishReason::Length => "length",
                }
                .to_string(),
            ),
        })
    }
}

/// The engine thread: takes the waiting requests, decodes them as one batch, answers each.
fn engine(
    lm: &Pretrained,
    eos: Vec<u32>,
    scores: &ScoreTokens,
    params: &Params,
    max_batch: usize,
    queue: &mpsc::Receiver<Pending>,
) {
    let generator = Generator::new(&lm.model, &lm.tokenizer, eos);
    let options = |stop: Vec<String>| GenOptions {
        max_new_tokens: params.max_tokens as usize,
        sampling: Sampling {
            temperature: f64::from(params.temperature),
            top_p: params.top_p.map_or(1.0, f64::from),
            top_k: params.top_k.map_or(0, |k| k as usize),
            repetition_penalty: params.repetition_penalty.unwrap_or(1.0),
        },
        seed: 0,
        stop,
        skip_special_tokens: true,
        threads: None,
    };
    // JSON replies end where their value does: a stop string could cut it.
    let (free, constrained) = (options(params.stop.clone()), options(Vec::new()));
    while let Ok(first) = queue.recv() {
        let mut batch = vec![first];
        let until = Instant::now() + GATHER;
        while batch.len() < max_batch {
            let left = until.saturating_duration_since(Instant::now());
            match queue.recv_timeout(left) {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        let (json, text): (Vec<Pending>, Vec<Pending>) =
            batch.into_iter().partition(|p| p.constraint.is_some());
        for (group, opts) in [(json, &constrained), (text, &free)] {
            if !group.is_empty() {
                decode(&generator, scores, group, opts);
            }
        }
    }
}

/// Decodes one batch and answers every request in it.
fn decode(generator: &Generator, scores: &ScoreTokens, batch: Vec<Pending>, opts: &GenOptions) {
    let prompts: Vec<Vec<u32>> = batch.iter().map(|p| p.prompt.clone()).collect();
    let seeds: Vec<u64> = batch.iter().map(|p| p.seed).collect();
    let mut guide = Guide {
        states: batch
            .iter()
            .map(|p| p.constraint.as_ref().map(JsonConstraint::start))
            .collect(),
        max_new_tokens: opts.max_new_tokens,
        scores,
        weighted: batch.iter().map(|p| p.weigh.then(Vec::new)).collect(),
    };
    match generator.generate_seeded(&prompts, &seeds, opts, Some(&mut guide)) {
        Ok(outs) => {
            let done = guide.states.into_iter().zip(guide.weighted);
            for ((p, out), (state, weighted)) in batch.into_iter().zip(outs).zip(done) {
                let json = match (state, weighted) {
                    (Some(s), _) if !s.is_complete() => Err(format!(
                        "the json reply is incomplete after {} tokens",
                        out.completion_tokens
                    )),
                    (Some(s), Some(w)) => reweigh(s.text(), &w)
                        .map(Some)
                        .ok_or_else(|| "cannot weigh the judgement's scores".to_string()),
                    (state, _) => Ok(state.map(|s| s.text().to_vec())),
                };
                let reply = json.map(|json| Decoded {
                    json,
                    generation: out,
                });
                let _ = p.answer.send(reply);
            }
        }
        Err(e) => {
            for p in batch {
                let _ = p.answer.send(Err(format!("{e:#}")));
            }
        }
    }
}

/// The JSON constraints of a batch's sequences (`None`: free text), and the weighted scores of
/// its judgements (`None`: not a judgement).
struct Guide<'a> {
    states: Vec<Option<ConstraintState>>,
    max_new_tokens: usize,
    scores: &'a ScoreTokens,
    weighted: Vec<Option<Vec<(&'static str, f64)>>>,
}

impl LogitsProcessor for Guide<'_> {
    fn mask(&mut self, seq: usize, generated: &[u32], allowed: &mut [bool]) -> Result<()> {
        if let Some(s) = &self.states[seq] {
            s.allowed(self.max_new_tokens - generated.len(), allowed);
        }
        Ok(())
    }

    fn observe(&mut self, seq: usize, logits: &[f32]) -> Result<()> {
        if let (Some(state), Some(weighted)) = (&self.states[seq], &mut self.weighted[seq])
            && let Some(key) = pending_key(state.text())
            && let Some(score) = self.scores.expectation(logits)
        {
            weighted.push((key, score));
        }
        Ok(())
    }

    fn accept(&mut self, seq: usize, token: u32) -> Result<()> {
        match &mut self.states[seq] {
            Some(s) if !s.is_eos(token) => s.advance(token),
            _ => Ok(()),
        }
    }
}
