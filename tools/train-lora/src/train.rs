//! The training loop: micro-batches (run as shards: [`crate::shard`]), token-normalised gradient
//! accumulation, clipping, AdamW, evaluation, early stopping, checkpoints (their files and `--resume`: [`crate::checkpoint`]).

use crate::batch::{Batch, Row, collate, epoch_order};
use crate::optim::{AdamW, AdamWConfig, Schedule, clip_global_norm, learning_rate};
use crate::shard::Parallel;
use anyhow::{Context, Result, bail};
use candle_core::{D, DType, Device, Tensor, Var};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// What the loop needs from a model.
pub trait TrainModel: Sync {
    /// Features `[batch.select.len(), f]` at the positions `batch.select` (flat `row * len + t`) that
    /// predict a target (the final hidden states); `dropout_seed` turns (deterministic) dropout on.
    fn features(&self, batch: &Batch, dropout_seed: Option<u64>) -> Result<Tensor>;
    /// Logits `[n, vocab]` of features `[n, f]` (the frozen output head).
    fn head(&self, features: &Tensor) -> Result<Tensor>;
    /// Logits `[batch.select.len(), vocab]`: [`Self::head`] of [`Self::features`].
    fn logits(&self, batch: &Batch, dropout_seed: Option<u64>) -> Result<Tensor> {
        self.head(&self.features(batch, dropout_seed)?)
    }
    /// The trainable tensors with stable names (PEFT key names for LoRA).
    fn trainable(&self) -> Vec<(String, Var)>;
    /// Writes the adapter (PEFT files) into `dir`, which exists.
    fn save_adapter(&self, dir: &Path) -> Result<()>;
    fn device(&self) -> &Device;
}

/// Loop settings (everything that shapes the trajectory is in here and in the data).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LoopConfig {
    pub lr: f64,
    pub schedule: Schedule,
    pub warmup_steps: u64,
    pub epochs: u64,
    pub max_steps: Option<u64>,
    pub batch_size: usize,
    pub grad_accum: usize,
    pub max_grad_norm: f64,
    pub adamw: AdamWConfig,
    pub seed: u64,
    #[serde(skip)]
    pub eval_every: u64,
    #[serde(skip)]
    pub save_every: u64,
    #[serde(skip)]
    pub log_every: u64,
    #[serde(skip)]
    pub early_stop_patience: Option<u64>,
    #[serde(skip)]
    pub pad_id: u32,
    /// Loss targets whose logits are materialised at once (0 = all); see [`backward_chunked`].
    /// Changes the memory and the summation order, not the loss: not part of the configuration digest.
    #[serde(skip)]
    pub loss_chunk: usize,
}

/// Where the loop stands; saved in every checkpoint as `trainer_state.json`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    /// Optimizer updates done.
    pub step: u64,
    /// Current epoch (0-based) and the next micro-batch within it.
    pub epoch: u64,
    pub micro: u64,
    /// Non-padding tokens and loss targets processed.
    pub tokens: u64,
    pub targets: u64,
    /// Sum of per-token training losses (so the mean over the run survives a resume).
    pub loss_sum: f64,
    pub best_val: Option<f64>,
    pub best_step: Option<u64>,
    pub evals_without_improvement: u64,
    /// Training seconds before this process (for tokens/s across a resume).
    pub elapsed_s: f64,
    pub config_digest: String,
}

/// One logged training step (a line of stdout).
#[derive(Clone, Debug, Serialize)]
pub struct StepLog {
    pub step: u64,
    pub epoch: f64,
    pub loss: f64,
    pub lr: f64,
    pub grad_norm: f64,
    pub tokens: u64,
    pub tokens_per_s: f64,
    pub elapsed_s: f64,
}

/// One evaluation (a line of stdout).
#[derive(Clone, Debug, Serialize)]
pub struct EvalLog {
    pub step: u64,
    pub val_loss: f64,
    pub val_perplexity: f64,
}

/// Mean loss and number of targets over a set of rows.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct EvalResult {
    pub loss: f64,
    pub perplexity: f64,
    pub targets: u64,
}

/// Summed cross-entropy of `labels` under `logits` `[labels.len(), vocab]` (see [`TrainModel::head`]).
pub fn loss_sum(logits: &Tensor, labels: &[u32], device: &Device) -> Result<Tensor> {
    let (n, _) = logits.dims2()?;
    if n != labels.len() {
        bail!("{n} logits for {} targets", labels.len());
    }
    let logits = logits.to_dtype(DType::F32)?;
    let labels = Tensor::from_slice(labels, n, device)?;
    let log_probs = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
    Ok(log_probs
        .gather(&labels.unsqueeze(1)?, 1)?
        .sum_all()?
        .neg()?)
}

/// The summed loss of `batch`'s targets and the gradients of (that sum / `denominator`), with at most
/// `chunk` targets' logits alive at a time (0 = all at once). A chunk's logits (`targets × vocab`,
/// f32, and as many again for log-softmax and its gradient: 5 GB each for 8×1024 targets over
/// Qwen2.5's 151,936 tokens) are the largest tensors of a step on big vocabularies. Each chunk's
/// loss is differentiated with respect to its slice of the (detached) features, then one backward
/// pass of `Σ features · dL/dfeatures` carries those gradients through the model: the same
/// gradients as one pass over all logits, in one forward and one backward of the model.
pub fn backward_chunked<M: TrainModel + ?Sized>(
    model: &M,
    batch: &Batch,
    dropout_seed: Option<u64>,
    denominator: f64,
    chunk: usize,
) -> Result<(f64, candle_core::backprop::GradStore)> {
    let device = model.device();
    let features = model.features(batch, dropout_seed)?;
    let n = features.dim(0)?;
    let labels = &batch.select_labels;
    if chunk == 0 || n <= chunk {
        let sum = loss_sum(&model.head(&features)?, labels, device)?;
        let loss = sum.to_scalar::<f32>()? as f64;
        return Ok((loss, (sum / denominator)?.backward()?));
    }
    let detached = features.detach();
    let (mut loss, mut grads) = (0f64, Vec::with_capacity(n.div_ceil(chunk)));
    for start in (0..n).step_by(chunk) {
        let len = chunk.min(n - start);
        let piece = Var::from_tensor(&detached.narrow(0, start, len)?)?;
        let sum = loss_sum(
            &model.head(piece.as_tensor())?,
            &labels[start..start + len],
            device,
        )?;
        loss += sum.to_scalar::<f32>()? as f64;
        let store = (sum / denominator)?.backward()?;
        grads.push(
            store
                .get(piece.as_tensor())
                .context("the output head passes no gradient to its input")?
                .clone(),
        );
    }
    let grad = Tensor::cat(&grads, 0)?;
    let surrogate = (features * grad)?.sum_all()?;
    Ok((loss, surrogate.backward()?))
}

/// Seed of the dropout masks of shard `shard` of update `step` (see [`crate::shard`]): fixed by the
/// run's seed and the data position, so a resumed run draws the same masks.
pub fn dropout_seed(seed: u64, step: u64, shard: usize) -> u64 {
    let mut r = ftkit_model::rng::Rng::from_state(
        seed ^ step.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ ((shard as u64) << 48),
    );
    r.next_u64()
}

/// Mean loss over `rows` without gradients, `batch_size` rows at a time (one-row shards on the CPU),
/// summed in row order, the logits of `chunk` targets at a time (0 = all; see [`backward_chunked`]).
pub fn evaluate<M: TrainModel>(
    model: &M,
    rows: &[Row],
    batch_size: usize,
    pad: u32,
    chunk: usize,
    parallel: &Parallel,
) -> Result<EvalResult> {
    let batches: Vec<Batch> = rows
        .chunks(parallel.shard_rows(batch_size))
        .map(|chunk| collate(&chunk.iter().collect::<Vec<_>>(), pad))
        .collect();
    let shard_loss = |_: usize, batch: &Batch| -> Result<(f64, u64)> {
        if batch.targets == 0 {
            return Ok((0.0, 0));
        }
        let features = model.features(batch, None)?.detach();
        let n = features.dim(0)?;
        let step = if chunk == 0 { n } else { chunk };
        let mut sum = 0f64;
        for start in (0..n).step_by(step.max(1)) {
            let len = step.min(n - start);
            let logits = model.head(&features.narrow(0, start, len)?)?;
            let labels = &batch.select_labels[start..start + len];
            sum += loss_sum(&logits, labels, model.device())?.to_scalar::<f32>()? as f64;
        }
        Ok((sum, batch.targets as u64))
    };
    let (sum, targets) =
        parallel.fold(&batches, shard_loss, (0f64, 0u64), |(s, t), (ds, dt)| {
            Ok((s + ds, t + dt))
        })?;
    let loss = if targets == 0 {
        f64::NAN
    } else {
        sum / targets as f64
    };
    Ok(EvalResult {
        loss,
        perplexity: loss.exp(),
        targets,
    })
}

/// How a run ended.
#[derive(Debug)]
pub struct Outcome {
    pub state: State,
    pub last_val: Option<EvalResult>,
    pub stopped_early: bool,
    /// Training seconds in this process.
    pub wall_s: f64,
}

/// Callbacks for the outside world: metrics lines and messages.
pub trait Sink {
    fn step(&mut self, log: &StepLog) -> Result<()>;
    fn eval(&mut self, log: &EvalLog) -> Result<()>;
    fn note(&mut self, message: &str);
}

/// The loop over one model and one set of rows.
pub struct Trainer<'a, M: TrainModel> {
    pub model: &'a M,
    pub config: LoopConfig,
    pub rows: &'a [Row],
    pub val_rows: &'a [Row],
    pub opt: AdamW,
    pub state: State,
    /// Where checkpoints go (`checkpoint-<step>/`), when saving.
    pub out_dir: Option<PathBuf>,
    /// Trainable tensors at the best validation loss (for early stopping; checkpoints carry them).
    pub best: Option<Vec<Tensor>>,
    /// Where the shards of an update (and of an evaluation) run.
    pub parallel: Parallel,
    /// The first update of the run has passed the gradient check.
    pub gradients_checked: bool,
}

impl<'a, M: TrainModel> Trainer<'a, M> {
    pub fn new(
        model: &'a M,
        config: LoopConfig,
        rows: &'a [Row],
        val_rows: &'a [Row],
        digest: String,
    ) -> Result<Self> {
        if rows.is_empty() {
            bail!("no training rows");
        }
        let opt = AdamW::new(model.trainable(), config.adamw)?;
        let parallel = Parallel::for_device(model.device(), config.batch_size * config.grad_accum)?;
        let state = State {
            config_digest: digest,
            ..Default::default()
        };
        Ok(Self {
            model,
            config,
            rows,
            val_rows,
            opt,
            state,
            out_dir: None,
            best: None,
            parallel,
            gradients_checked: false,
        })
    }

    /// Micro-batches per epoch.
    pub fn micro_per_epoch(&self) -> u64 {
        self.rows.len().div_ceil(self.config.batch_size) as u64
    }

    /// Optimizer updates per epoch (the last one may take fewer micro-batches).
    pub fn steps_per_epoch(&self) -> u64 {
        self.micro_per_epoch()
            .div_ceil(self.config.grad_accum as u64)
    }

    /// Updates the run will make in all.
    pub fn total_steps(&self) -> u64 {
        self.config
            .max_steps
            .unwrap_or(self.config.epochs * self.steps_per_epoch())
    }

    /// The micro-batches of the next update, advancing (epoch, micro).
    fn next_micro_batches(&mut self) -> Vec<Vec<&'a Row>> {
        let per_epoch = self.micro_per_epoch();
        if self.state.micro >= per_epoch {
            self.state.epoch += 1;
            self.state.micro = 0;
        }
        let order = epoch_order(self.rows.len(), self.config.seed, self.state.epoch);
        let mut out = Vec::with_capacity(self.config.grad_accum);
        while out.len() < self.config.grad_accum && self.state.micro < per_epoch {
            let start = self.state.micro as usize * self.config.batch_size;
            let end = (start + self.config.batch_size).min(order.len());
            let rows = self.rows;
            out.push(order[start..end].iter().map(|&i| &rows[i]).collect());
            self.state.micro += 1;
        }
        out
    }

    /// Runs one update: forward/backward over its micro-batches (loss = Σ token losses / Σ targets of
    /// the whole update), clip, AdamW. Returns (mean loss, grad norm before clipping, tokens).
    pub fn train_step(&mut self) -> Result<(f64, f64, u64)> {
        let micro = self.next_micro_batches();
        let shard_rows = self.parallel.shard_rows(self.config.batch_size);
        let shards: Vec<Batch> = micro
            .iter()
            .flat_map(|rows| rows.chunks(shard_rows))
            .map(|rows| collate(rows, self.config.pad_id))
            .collect();
        let targets: usize = shards.iter().map(|b| b.targets).sum();
        let tokens: usize = shards.iter().map(|b| b.tokens).sum();
        if targets == 0 {
            bail!("an update with no loss targets (every example needs an assistant token)");
        }
        let (model, params) = (self.model, self.opt.params());
        let (seed, step) = (self.config.seed, self.state.step);
        let chunk = self.config.loss_chunk;
        // Each shard: its summed loss and the gradients of (its loss sum / the update's targets).
        let shard_grads = |si: usize, batch: &Batch| -> Result<(f64, Option<Vec<Tensor>>)> {
            if batch.targets == 0 {
                return Ok((0.0, None));
            }
            let seed = Some(dropout_seed(seed, step, si));
            let (loss, store) = backward_chunked(model, batch, seed, targets as f64, chunk)?;
            let grads = params
                .iter()
                .map(|(name, var)| {
                    store.get(var.as_tensor()).cloned().with_context(|| {
                        format!("trainable tensor {name} received no gradient: the forward pass does not reach it")
                    })
                })
                .collect::<Result<_>>()?;
            Ok((loss, Some(grads)))
        };
        let (loss_total, grads) = self.parallel.fold(
            &shards,
            shard_grads,
            (0f64, None::<Vec<Tensor>>),
            |(loss_total, acc), (loss, grads)| {
                let acc = match (acc, grads) {
                    (Some(acc), Some(grads)) => Some(
                        acc.iter()
                            .zip(&grads)
                            .map(|(a, g)| a + g)
                            .collect::<candle_core::Result<_>>()?,
                    ),
                    (acc, grads) => acc.or(grads),
                };
                Ok((loss_total + loss, acc))
            },
        )?;
        let mut grads = grads.context("no gradient")?;
        if !self.gradients_checked && self.state.step == 0 {
            // The first update of a run (not of a resume: later gradients may be zero legitimately, as
            // where a softmax saturates): every trainable tensor must get a finite gradient, non-zero
            // wherever it can be (candle#2168 cuts graphs silently).
            let list: Vec<Option<&Tensor>> = grads.iter().map(Some).collect();
            ftkit_model::check_gradient_list(&list, params)
                .context("start-up gradient check (first update)")?;
            self.gradients_checked = true;
        }
        let norm = clip_global_norm(&mut grads, self.config.max_grad_norm)?;
        let lr = self.current_lr();
        self.opt.step(&grads, lr)?;
        self.state.step += 1;
        self.state.tokens += tokens as u64;
        self.state.targets += targets as u64;
        self.state.loss_sum += loss_total;
        let loss = loss_total / targets as f64;
        if !loss.is_finite() {
            bail!("training loss is {loss} at step {}", self.state.step);
        }
        Ok((loss, norm, tokens as u64))
    }

    /// The learning rate of the next update.
    pub fn current_lr(&self) -> f64 {
        let c = &self.config;
        learning_rate(
            c.schedule,
            c.lr,
            self.state.step,
            c.warmup_steps,
            self.total_steps(),
        )
    }

    /// Trains until the last step or early stop, logging, evaluating and checkpointing as configured.
    pub fn run(&mut self, sink: &mut dyn Sink) -> Result<Outcome> {
        let total = self.total_steps();
        let start = Instant::now();
        let start_tokens = self.state.tokens;
        let mut last_val = None;
        // A checkpoint taken at the update that triggered early stopping (it is written just before the
        // stop): the uninterrupted run ended there, so the resumed one does too.
        let mut stopped_early = self.patience_exhausted();
        if stopped_early {
            self.note_early_stop(sink);
        }
        let per_epoch = self.micro_per_epoch().max(1) as f64;
        while !stopped_early && self.state.step < total {
            let lr = self.current_lr();
            let (loss, grad_norm, _) = self.train_step()?;
            let step = self.state.step;
            let elapsed = start.elapsed().as_secs_f64();
            if step.is_multiple_of(self.config.log_every.max(1)) || step == total {
                let tokens_here = self.state.tokens - start_tokens;
                sink.step(&StepLog {
                    step,
                    epoch: self.state.epoch as f64 + self.state.micro as f64 / per_epoch,
                    loss,
                    lr,
                    grad_norm,
                    tokens: self.state.tokens,
                    tokens_per_s: if elapsed > 0.0 {
                        tokens_here as f64 / elapsed
                    } else {
                        0.0
                    },
                    elapsed_s: self.state.elapsed_s + elapsed,
                })?;
            }
            let eval_now = self.config.eval_every > 0
                && step.is_multiple_of(self.config.eval_every)
                && !self.val_rows.is_empty();
            if eval_now {
                let r = evaluate(
                    self.model,
                    self.val_rows,
                    self.config.batch_size,
                    self.config.pad_id,
                    self.config.loss_chunk,
                    &self.parallel,
                )?;
                sink.eval(&EvalLog {
                    step,
                    val_loss: r.loss,
                    val_perplexity: r.perplexity,
                })?;
                last_val = Some(r);
                if self.state.best_val.is_none_or(|b| r.loss < b) {
                    self.state.best_val = Some(r.loss);
                    self.state.best_step = Some(step);
                    self.state.evals_without_improvement = 0;
                    if self.config.early_stop_patience.is_some() {
                        self.best = Some(self.snapshot()?);
                    }
                } else {
                    self.state.evals_without_improvement += 1;
                }
            }
            if self.config.save_every > 0
                && step.is_multiple_of(self.config.save_every)
                && step < total
                && let Some(dir) = self.out_dir.clone()
            {
                let elapsed_total = self.state.elapsed_s + start.elapsed().as_secs_f64();
                let path = self.save_checkpoint(&dir, elapsed_total)?;
                sink.note(&format!("saved {}", path.display()));
            }
            if eval_now && self.patience_exhausted() {
                self.note_early_stop(sink);
                stopped_early = true;
            }
        }
        let wall_s = start.elapsed().as_secs_f64();
        self.state.elapsed_s += wall_s;
        Ok(Outcome {
            state: self.state.clone(),
            last_val,
            stopped_early,
            wall_s,
        })
    }

    /// Early stopping is on and the last `patience` evaluations brought no improvement.
    fn patience_exhausted(&self) -> bool {
        self.config
            .early_stop_patience
            .is_some_and(|p| self.state.evals_without_improvement >= p)
    }

    fn note_early_stop(&self, sink: &mut dyn Sink) {
        sink.note(&format!(
            "early stop at step {}: no validation improvement in {} evaluations (best {:.4} at step {})",
            self.state.step,
            self.state.evals_without_improvement,
            self.state.best_val.unwrap_or(f64::NAN),
            self.state.best_step.unwrap_or(0)
        ));
    }

    /// Copies of the trainable tensors.
    pub fn snapshot(&self) -> Result<Vec<Tensor>> {
        self.opt
            .params()
            .iter()
            .map(|(_, v)| Ok(v.as_tensor().copy()?))
            .collect()
    }

    /// Puts tensors from [`Trainer::snapshot`] back.
    pub fn restore(&self, tensors: &[Tensor]) -> Result<()> {
        for ((_, v), t) in self.opt.params().iter().zip(tensors) {
            v.set(t)?;
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod toy {
    //! A bigram model (one trainable `[vocab, vocab]` table) to test the loop without a transformer,
    //! with a toy data set, a loop configuration and a sink that collects the metrics lines.
    use super::*;
    use crate::batch::{Encoded, make_rows};
    use crate::optim::save_tensors;

    pub struct Bigram {
        pub table: Var,
        pub device: Device,
    }

    impl Bigram {
        pub fn new(vocab: usize) -> Result<Self> {
            let device = Device::Cpu;
            let init: Vec<f32> = (0..vocab * vocab)
                .map(|i| ((i * 7919) % 13) as f32 * 0.01)
                .collect();
            let table = Var::from_vec(init, (vocab, vocab), &device)?;
            Ok(Self { table, device })
        }
    }

    impl TrainModel for Bigram {
        /// The table's rows are the features, the head is the identity.
        fn features(&self, batch: &Batch, _dropout_seed: Option<u64>) -> Result<Tensor> {
            let sel = Tensor::from_slice(&batch.select, batch.select.len(), &self.device)?;
            let ids = Tensor::from_slice(&batch.ids, batch.ids.len(), &self.device)?
                .index_select(&sel, 0)?;
            Ok(self.table.as_tensor().index_select(&ids, 0)?)
        }
        fn head(&self, features: &Tensor) -> Result<Tensor> {
            Ok(features.clone())
        }
        fn trainable(&self) -> Vec<(String, Var)> {
            vec![("table".into(), self.table.clone())]
        }
        fn save_adapter(&self, dir: &Path) -> Result<()> {
            save_tensors(
                &dir.join("adapter.safetensors"),
                &[("table".into(), self.table.as_tensor().clone())],
            )
        }
        fn device(&self) -> &Device {
            &self.device
        }
    }

    /// Collects metrics lines.
    pub struct Collect(pub Vec<StepLog>, pub Vec<EvalLog>);
    impl Sink for Collect {
        fn step(&mut self, log: &StepLog) -> Result<()> {
            self.0.push(log.clone());
            Ok(())
        }
        fn eval(&mut self, log: &EvalLog) -> Result<()> {
            self.1.push(log.clone());
            Ok(())
        }
        fn note(&mut self, _: &str) {}
    }

    pub fn config() -> LoopConfig {
        LoopConfig {
            lr: 0.1,
            schedule: Schedule::Cosine,
            warmup_steps: 2,
            epochs: 3,
            max_steps: None,
            batch_size: 2,
            grad_accum: 2,
            max_grad_norm: 1.0,
            adamw: AdamWConfig::default(),
            seed: 5,
            eval_every: 2,
            save_every: 0,
            log_every: 1,
            early_stop_patience: None,
            pad_id: 0,
            loss_chunk: 0,
        }
    }

    /// Sequences "p q q+1 q+2 ..." where only the counting part is a target.
    pub fn rows() -> Vec<Row> {
        let ex: Vec<Encoded> = (0..10u32)
            .map(|i| {
                let start = 1 + i % 5;
                let len = 3 + (i as usize % 4);
                let ids: Vec<u32> = std::iter::once(9)
                    .chain((0..len as u32).map(|k| start + k))
                    .collect();
                let target = (0..ids.len()).map(|k| k >= 2).collect();
                Encoded { ids, target }
            })
            .collect();
        make_rows(&ex, 64, false)
    }
}

#[cfg(test)]
mod tests {
    use super::toy::{Bigram, Collect, config, rows};
    use super::*;

    /// A bigram whose second trainable tensor reaches the loss only multiplied by zero: it gets a
    /// gradient, all zeros, as a LoRA tensor behind a cut graph would.
    struct DeadEnd {
        bigram: Bigram,
        dead: Var,
    }

    impl TrainModel for DeadEnd {
        fn features(&self, batch: &Batch, seed: Option<u64>) -> Result<Tensor> {
            let logits = self.bigram.features(batch, seed)?;
            let dead = self.dead.as_tensor();
            let zero = (dead * dead.zeros_like()?)?.sum_all()?;
            Ok(logits.broadcast_add(&zero)?)
        }
        fn head(&self, features: &Tensor) -> Result<Tensor> {
            Ok(features.clone())
        }
        fn trainable(&self) -> Vec<(String, Var)> {
            let mut t = self.bigram.trainable();
            t.push(("dead".into(), self.dead.clone()));
            t
        }
        fn save_adapter(&self, dir: &Path) -> Result<()> {
            self.bigram.save_adapter(dir)
        }
        fn device(&self) -> &Device {
            self.bigram.device()
        }
    }

    #[test]
    fn the_first_update_refuses_an_all_zero_gradient() -> Result<()> {
        let bigram = Bigram::new(16)?;
        let dead = Var::from_vec(vec![1f32; 4], 4, &Device::Cpu)?;
        let model = DeadEnd { bigram, dead };
        let rows = rows();
        let mut t = Trainer::new(&model, config(), &rows, &[], "d".into())?;
        let err = t.train_step().err().map(|e| format!("{e:#}"));
        assert!(
            err.as_deref()
                .is_some_and(|e| e.contains("all-zero gradient for dead")),
            "{err:?}"
        );
        Ok(())
    }

    #[test]
    fn loss_decreases_and_eval_runs() -> Result<()> {
        let m = Bigram::new(16)?;
        let r = rows();
        let mut t = Trainer::new(&m, config(), &r, &r[..3], "d".into())?;
        let mut sink = Collect(vec![], vec![]);
        let out = t.run(&mut sink)?;
        assert_eq!(out.state.step, t.total_steps());
        assert_eq!(t.total_steps(), 3 * 3); // 5 micro-batches per epoch, 2 per update → 3 updates
        let (first, last) = (
            sink.0[0].loss,
            sink.0.last().map(|l| l.loss).unwrap_or(f64::NAN),
        );
        assert!(last < first * 0.8, "loss {first} -> {last}");
        assert_eq!(sink.1.len(), 4);
        Ok(())
    }

    #[test]
    fn accumulation_is_normalised_by_tokens() -> Result<()> {
        // One update over 4 rows as 1 micro-batch of 4 or as 4 micro-batches of 1 gives the same
        // weights, whether the micro-batches run whole (as on a GPU) or as one-row shards on workers.
        let r = rows();
        let mut results = Vec::new();
        let sharded = [false, true];
        for ((batch_size, grad_accum), shards) in [(4, 1), (1, 4), (2, 2)]
            .into_iter()
            .flat_map(|c| sharded.map(|s| (c, s)))
        {
            let m = Bigram::new(16)?;
            let cfg = LoopConfig {
                batch_size,
                grad_accum,
                max_steps: Some(1),
                warmup_steps: 0,
                ..config()
            };
            let mut t = Trainer::new(&m, cfg, &r, &[], "d".into())?;
            if !shards {
                t.parallel = Parallel::Inline;
            }
            let (loss, norm, _) = t.train_step()?;
            results.push((
                loss,
                norm,
                m.table.as_tensor().flatten_all()?.to_vec1::<f32>()?,
            ));
        }
        for other in &results[1..] {
            assert!(
                (results[0].0 - other.0).abs() < 1e-6,
                "{} vs {}",
                results[0].0,
                other.0
            );
            assert!((results[0].1 - other.1).abs() < 1e-6);
            for (a, b) in results[0].2.iter().zip(&other.2) {
                assert!((a - b).abs() < 1e-6);
            }
        }
        Ok(())
    }

    #[test]
    fn loss_is_the_mean_cross_entropy_of_targets() -> Result<()> {
        let m = Bigram::new(16)?;
        let r = rows();
        let b = collate(&[&r[0], &r[1]], 0);
        let got = loss_sum(&m.logits(&b, None)?, &b.select_labels, &Device::Cpu)?
            .to_scalar::<f32>()? as f64;
        // By hand: -log softmax(table[ids[t]])[ids[t + 1]] over the weighted positions only.
        let table = m.table.as_tensor().to_vec2::<f32>()?;
        let mut want = 0f64;
        for (i, w) in b.weights.iter().enumerate() {
            if *w == 0.0 {
                continue;
            }
            let (row, t) = (i / (b.len - 1), i % (b.len - 1));
            let logits = &table[b.ids[row * b.len + t] as usize];
            let lse = logits.iter().map(|&x| (x as f64).exp()).sum::<f64>().ln();
            want += lse - logits[b.labels[i] as usize] as f64;
        }
        assert!((got - want).abs() < 1e-4, "{got} vs {want}");
        assert!(b.weights.contains(&0.0), "the example has prompt tokens");
        Ok(())
    }

    #[test]
    fn early_stopping_stops() -> Result<()> {
        let m = Bigram::new(16)?;
        let r = rows();
        // A huge learning rate makes validation loss worse after the first evaluation.
        let cfg = LoopConfig {
            lr: 50.0,
            max_grad_norm: 0.0,
            eval_every: 1,
            early_stop_patience: Some(2),
            warmup_steps: 0,
            schedule: Schedule::Constant,
            epochs: 20,
            ..config()
        };
        let mut t = Trainer::new(&m, cfg, &r, &r[5..], "d".into())?;
        let out = t.run(&mut Collect(vec![], vec![]))?;
        assert!(out.stopped_early, "ran {} steps", out.state.step);
        assert!(out.state.step < t.total_steps());
        Ok(())
    }

    #[test]
    fn chunked_logits_give_the_loss_and_gradients_of_all_at_once() -> Result<()> {
        let m = Bigram::new(16)?;
        let r = rows();
        let b = collate(&[&r[0], &r[1], &r[2]], 0);
        assert!(b.targets > 5, "{} targets", b.targets);
        let (whole, gw) = backward_chunked(&m, &b, None, 3.0, 0)?;
        let gw = gw.get(m.table.as_tensor()).context("no gradient")?.clone();
        // By hand: the mean cross-entropy over the targets.
        let by_hand = loss_sum(&m.logits(&b, None)?, &b.select_labels, &Device::Cpu)?;
        assert!((whole - by_hand.to_scalar::<f32>()? as f64).abs() < 1e-4);
        for chunk in [1, 2, 5, b.targets] {
            let (loss, g) = backward_chunked(&m, &b, None, 3.0, chunk)?;
            assert!(
                (loss - whole).abs() < 1e-4,
                "chunk {chunk}: {loss} vs {whole}"
            );
            let g = g.get(m.table.as_tensor()).context("no gradient")?;
            let diff = (g - &gw)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(diff < 1e-6, "chunk {chunk}: gradient differs by {diff}");
        }
        // The gradient is not trivially zero.
        assert!(gw.abs()?.max_all()?.to_scalar::<f32>()? > 1e-3);
        Ok(())
    }
}
