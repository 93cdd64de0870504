//! Local text generation: batched decoding with a KV cache, sampling, stop strings and EOS,
//! and a hook that masks the logits (constrained decoding).
//!
//! ```no_run
//! # fn main() -> anyhow::Result<()> {
//! use ftkit_model::generate::{GenOptions, Generator};
//! # let model: ftkit_model::CausalLm = todo!();
//! # let tok: tokenizers::Tokenizer = todo!();
//! # let tmpl: ftkit_model::ChatTemplate = todo!();
//! let eos = model.config.eos_token_ids.clone();
//! let g = Generator::new(&model, &tok, eos);
//! let prompt = g.encode_chat(&tmpl, &[ftkit_model::ChatMessage::new("user", "Hi")])?;
//! let opts = GenOptions { max_new_tokens: 64, ..GenOptions::default() };
//! for out in g.generate(&[prompt], &opts, None)? {
//!     println!("{} ({:?})", out.text, out.finish);
//! }
//! # Ok(()) }
//! ```
//!
//! All prompts of a call decode together (left padding, see [`cache`]); a finished sequence
//! is dropped from the batch at the next step. Greedy outputs of a batch equal those of each
//! prompt alone; sampled ones use one RNG stream per prompt ([`sequence_seed`]), so they do
//! not depend on the batch either, as long as the logits agree to the last bit (batching can
//! change float rounding, so a draw that falls on a probability boundary may differ).

mod attend;
pub mod cache;
pub mod sampling;
pub(crate) mod simd;

pub use cache::KvCache;
pub use sampling::{Sampling, find_stop};

use crate::chat::{ChatMessage, ChatTemplate, TokenizerConfig};
use crate::model::CausalLm;
use crate::rng::Rng;
use anyhow::{Context, Result, anyhow, bail};
use candle_core::Tensor;
use tokenizers::Tokenizer;

/// Options of one [`Generator::generate`] call.
#[derive(Debug, Clone, PartialEq)]
pub struct GenOptions {
    pub max_new_tokens: usize,
    pub sampling: Sampling,
    /// Seed of the sampling streams (unused when greedy).
    pub seed: u64,
    /// Generation ends when the decoded completion contains one of these; the text is cut
    /// before it (also when it spans several tokens).
    pub stop: Vec<String>,
    /// Drop special tokens (e.g. `<|im_start|>`) from the decoded text (and from what stop
    /// strings are matched against).
    pub skip_special_tokens: bool,
    /// CPU threads for this call (a rayon pool of that size); `None` = the current pool.
    pub threads: Option<usize>,
}

impl Default for GenOptions {
    fn default() -> Self {
        Self {
            max_new_tokens: 256,
            sampling: Sampling::default(),
            seed: 0,
            stop: Vec::new(),
            skip_special_tokens: true,
            threads: None,
        }
    }
}

/// Why a sequence ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// A stop string appeared.
    Stop,
    /// The model chose an EOS token.
    Eos,
    /// `max_new_tokens` reached.
    Length,
}

impl FinishReason {
    /// `"stop"`, `"eos"`, `"length"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stop => "stop",
            Self::Eos => "eos",
            Self::Length => "length",
        }
    }
}

/// The completion of one prompt.
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    /// Decoded completion, cut before the stop string.
    pub text: String,
    /// Generated token ids, the EOS token excluded (tokens of a stop string included: they
    /// were generated).
    pub tokens: Vec<u32>,
    pub finish: FinishReason,
    pub prompt_tokens: usize,
    /// Tokens the model generated, EOS included (what usage accounting counts).
    pub completion_tokens: usize,
}

/// A caller-supplied constraint on each step (e.g. a JSON grammar). `Send`: with
/// [`GenOptions::threads`] the decoding runs inside a pool of its own.
///
/// `seq` is the prompt's index in the [`Generator::generate`] call (stable while the batch
/// shrinks); `generated` the tokens chosen so far for it (EOS never appears: it ends the
/// sequence).
pub trait LogitsProcessor: Send {
    /// Clear `allowed[id]` for each token that must not come next. `allowed` covers the
    /// model's vocabulary (logit rows), all `true` on entry. Allowing nothing is an error.
    fn mask(&mut self, seq: usize, generated: &[u32], allowed: &mut [bool]) -> Result<()>;

    /// Shown the logits the next token of `seq` is drawn from: the model's, masked, before any
    /// repetition penalty or temperature.
    fn observe(&mut self, _seq: usize, _logits: &[f32]) -> Result<()> {
        Ok(())
    }

    /// Told the token chosen for `seq` (an EOS token included).
    fn accept(&mut self, _seq: usize, _token: u32) -> Result<()> {
        Ok(())
    }
}

/// The RNG seed of prompt `index` in a call with seed `seed`.
pub fn sequence_seed(seed: u64, index: usize) -> u64 {
    let mut r = Rng::derive(seed, &format!("generate/{index}"));
    r.next_u64()
}

/// EOS ids of a model: `config.json`'s `eos_token_id`(s) plus the tokenizer config's
/// `eos_token` (chat models end a turn with it, e.g. `<|im_end|>`), deduplicated.
pub fn default_eos_ids(
    model: &CausalLm,
    tokenizer: &Tokenizer,
    config: Option<&TokenizerConfig>,
) -> Vec<u32> {
    eos_ids(&model.config, tokenizer, config)
}

/// [`default_eos_ids`] from the hyper-parameters alone (no loaded weights): exports use it.
pub fn eos_ids(
    model: &crate::ModelConfig,
    tokenizer: &Tokenizer,
    config: Option<&TokenizerConfig>,
) -> Vec<u32> {
    let mut ids = model.eos_token_ids.clone();
    if let Some(id) = config
        .and_then(|c| c.eos_token.as_deref())
        .and_then(|t| tokenizer.token_to_id(t))
    {
        ids.push(id);
    }
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// Decodes with a model and its tokenizer.
pub struct Generator<'a> {
    model: &'a CausalLm,
    tokenizer: &'a Tokenizer,
    eos: Vec<u32>,
}

/// Per-prompt decoding state.
struct Seq {
    rng: Rng,
    tokens: Vec<u32>,
    text: String,
    finish: Option<FinishReason>,
    eos: bool,
}

impl<'a> Generator<'a> {
    /// `eos`: token ids that end a sequence (see [`default_eos_ids`]); may be empty.
    pub fn new(model: &'a CausalLm, tokenizer: &'a Tokenizer, eos: Vec<u32>) -> Self {
        Self {
            model,
            tokenizer,
            eos,
        }
    }

    pub fn eos_ids(&self) -> &[u32] {
        &self.eos
    }

    /// Prompt ids of a conversation: the chat template with the generation prompt, tokenized
    /// without adding special tokens (the template writes them).
    pub fn encode_chat(
        &self,
        template: &ChatTemplate,
        messages: &[ChatMessage],
    ) -> Result<Vec<u32>> {
        let text = template.render(messages, true)?;
        self.encode_text(&text, false)
    }

    /// Prompt ids of plain text; `add_special_tokens` as in `tokenizers` (e.g. a BOS).
    pub fn encode_text(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let enc = self
            .tokenizer
            .encode(text, add_special_tokens)
            .map_err(|e| anyhow!("tokenizer: {e}"))?;
        Ok(enc.get_ids().to_vec())
    }

    fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        self.tokenizer
            .decode(ids, skip_special)
            .map_err(|e| anyhow!("tokenizer: {e}"))
    }

    /// Generate a completion for each prompt (token ids), all in one batch. Prompt `i`
    /// samples from the stream [`sequence_seed`]`(opts.seed, i)`.
    pub fn generate(
        &self,
        prompts: &[Vec<u32>],
        opts: &GenOptions,
        processor: Option<&mut dyn LogitsProcessor>,
    ) -> Result<Vec<Generation>> {
        let seeds: Vec<u64> = (0..prompts.len())
            .map(|i| sequence_seed(opts.seed, i))
            .collect();
        self.generate_seeded(prompts, &seeds, opts, processor)
    }

    /// [`Self::generate`] with each prompt's RNG seed given (`opts.seed` unused): callers that
    /// split their prompts into batches keep results independent of the split.
    pub fn generate_seeded(
        &self,
        prompts: &[Vec<u32>],
        seeds: &[u64],
        opts: &GenOptions,
        processor: Option<&mut dyn LogitsProcessor>,
    ) -> Result<Vec<Generation>> {
        opts.sampling.validate()?;
        if seeds.len() != prompts.len() {
            bail!("{} seeds for {} prompts", seeds.len(), prompts.len());
        }
        match opts.threads {
            Some(0) => bail!("threads must be at least 1"),
            Some(n) => rayon::ThreadPoolBuilder::new()
                .num_threads(n)
                .build()
                .context("generation thread pool")?
                .install(|| self.run(prompts, seeds, opts, processor)),
            None => self.run(prompts, seeds, opts, processor),
        }
    }

    fn run(
        &self,
        prompts: &[Vec<u32>],
        seeds: &[u64],
        opts: &GenOptions,
        mut processor: Option<&mut dyn LogitsProcessor>,
    ) -> Result<Vec<Generation>> {
        if let Some(i) = prompts.iter().position(Vec::is_empty) {
            bail!("prompt {} is empty", i + 1);
        }
        let mut seqs: Vec<Seq> = seeds
            .iter()
            .map(|&s| Seq {
                rng: Rng::new(s),
                tokens: Vec::new(),
                text: String::new(),
                finish: (opts.max_new_tokens == 0).then_some(FinishReason::Length),
                eos: false,
            })
            .collect();
        if !prompts.is_empty() && opts.max_new_tokens > 0 {
            self.decode_batch(prompts, opts, &mut seqs, &mut processor)?;
        }
        prompts
            .iter()
            .zip(seqs)
            .map(|(p, s)| {
                let finish = s.finish.context("generation ended without a reason")?;
                Ok(Generation {
                    completion_tokens: s.tokens.len() + usize::from(s.eos),
                    text: s.text,
                    tokens: s.tokens,
                    finish,
                    prompt_tokens: p.len(),
                })
            })
            .collect()
    }

    fn decode_batch(
        &self,
        prompts: &[Vec<u32>],
        opts: &GenOptions,
        seqs: &mut [Seq],
        processor: &mut Option<&mut dyn LogitsProcessor>,
    ) -> Result<()> {
        let dev = self.model.device();
        let width = prompts.iter().map(Vec::len).max().unwrap_or(0);
        let pad: Vec<usize> = prompts.iter().map(|p| width - p.len()).collect();
        // Padding columns hold any valid id; the mask hides them.
        let mut ids = Vec::with_capacity(prompts.len() * width);
        for (p, &n) in prompts.iter().zip(&pad) {
            ids.extend(std::iter::repeat_n(p[0], n));
            ids.extend_from_slice(p);
        }
        let capacity = width + opts.max_new_tokens;
        let mut cache = KvCache::new(self.model, pad, capacity)?;
        let input = Tensor::from_vec(ids, (prompts.len(), width), dev)?;
        let mut logits = self.model.forward_cached_host(&input, &mut cache)?;
        // Row r of the batch decodes prompt active[r].
        let mut active: Vec<usize> = (0..prompts.len()).collect();
        loop {
            let vocab = logits.len() / active.len();
            let mut next = Vec::with_capacity(active.len());
            for (row, &i) in logits.chunks_exact_mut(vocab).zip(&active) {
                let token = self.step(i, row, opts, &mut seqs[i], processor)?;
                next.push(token);
            }
            let keep: Vec<usize> = (0..active.len())
                .filter(|&r| seqs[active[r]].finish.is_none())
                .collect();
            if keep.is_empty() {
                return Ok(());
            }
            if keep.len() < active.len() {
                cache.retain(&keep)?;
                active = keep.iter().map(|&r| active[r]).collect();
                next = keep.iter().map(|&r| next[r]).collect();
            }
            let input = Tensor::from_vec(next, (active.len(), 1), dev)?;
            logits = self.model.forward_cached_host(&input, &mut cache)?;
        }
    }

    /// Choose sequence `i`'s next token from its logits row and update its state.
    fn step(
        &self,
        i: usize,
        row: &mut [f32],
        opts: &GenOptions,
        seq: &mut Seq,
        processor: &mut Option<&mut dyn LogitsProcessor>,
    ) -> Result<u32> {
        if let Some(p) = processor.as_deref_mut() {
            let mut allowed = vec![true; row.len()];
            p.mask(i, &seq.tokens, &mut allowed)
                .with_context(|| format!("logits processor, prompt {}", i + 1))?;
            for (v, ok) in row.iter_mut().zip(&allowed) {
                if !ok {
                    *v = f32::NEG_INFINITY;
                }
            }
            p.observe(i, row)?;
        }
        opts.sampling.penalize(row, &seq.tokens);
        let token = opts
            .sampling
            .pick(row, &mut seq.rng)
            .with_context(|| format!("prompt {}", i + 1))?;
        if let Some(p) = processor.as_deref_mut() {
            p.accept(i, token)?;
        }
        if self.eos.contains(&token) {
            seq.eos = true;
            seq.finish = Some(FinishReason::Eos);
        } else {
            seq.tokens.push(token);
            // The text so far only where a stop string may end it: decoding every step costs
            // the whole sequence each time.
            if !opts.stop.is_empty() {
                seq.text = self.decode(&seq.tokens, opts.skip_special_tokens)?;
                if let Some(at) = find_stop(&seq.text, &opts.stop) {
                    seq.text.truncate(at);
                    seq.finish = Some(FinishReason::Stop);
                }
            }
            if seq.finish.is_none() && seq.tokens.len() >= opts.max_new_tokens {
                seq.finish = Some(FinishReason::Length);
            }
        }
        if seq.finish.is_some() && opts.stop.is_empty() {
            seq.text = self.decode(&seq.tokens, opts.skip_special_tokens)?;
        }
        Ok(token)
    }
}
