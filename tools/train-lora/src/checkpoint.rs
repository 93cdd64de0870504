//! Checkpoint folders (`checkpoint-<step>/`): everything `--resume` needs to continue exactly.
//!
//! - `adapter_config.json`, `adapter_model.safetensors`: the adapter at that step in PEFT's layout
//!   (usable as is; resume does not read them);
//! - `trainable.safetensors`: the trainable tensors by name, bit for bit;
//! - `optimizer.safetensors`: AdamW's moments (its update count is the step);
//! - `best.safetensors`: with early stopping, the trainable tensors of the best validation step so far.
//!   The run ends by keeping those, so a resumed run needs them as much as the current ones;
//! - `trainer_state.json`: the loop's [`State`]: step, data position (epoch, next micro-batch), counters,
//!   best validation loss and step, evaluations without improvement, and the config digest to match.
//!
//! Nothing else needs saving: the learning rate is a function of the step, the shuffling order of
//! (seed, epoch) and the dropout masks of (seed, step, shard, layer), and a checkpoint is only
//! written between updates, so no gradient accumulation is ever in flight.

use crate::optim::{load_tensors, save_tensors};
use crate::train::{State, TrainModel, Trainer};
use anyhow::{Context, Result, bail};
use candle_core::{Device, Tensor, Var};
use ftkit_core::io::AtomicDir;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

const TRAINABLE: &str = "trainable.safetensors";
const OPTIMIZER: &str = "optimizer.safetensors";
const BEST: &str = "best.safetensors";
const STATE: &str = "trainer_state.json";

impl<M: TrainModel> Trainer<'_, M> {
    /// Writes `out/checkpoint-<step>/`, built under a temporary name and renamed into place, so a
    /// checkpoint folder is always complete.
    pub fn save_checkpoint(&self, out: &Path, elapsed_s: f64) -> Result<PathBuf> {
        let final_dir = out.join(format!("checkpoint-{}", self.state.step));
        let building = AtomicDir::create(&final_dir)?;
        let tmp = building.path();
        self.model.save_adapter(tmp)?;
        let params = self.opt.params();
        let current: Vec<Tensor> = params.iter().map(|(_, v)| v.as_tensor().clone()).collect();
        save_tensors(&tmp.join(TRAINABLE), &named(params, &current))?;
        self.opt.save(&tmp.join(OPTIMIZER))?;
        if let Some(best) = &self.best {
            save_tensors(&tmp.join(BEST), &named(params, best))?;
        }
        let state = State {
            elapsed_s,
            ..self.state.clone()
        };
        ftkit_core::io::write_atomic(&tmp.join(STATE), &serde_json::to_vec_pretty(&state)?)?;
        building.commit()?;
        Ok(final_dir)
    }

    /// Continues from a checkpoint written by [`Trainer::save_checkpoint`] with the same configuration.
    pub fn resume(&mut self, dir: &Path) -> Result<()> {
        let state_path = dir.join(STATE);
        let bytes = std::fs::read(&state_path)
            .with_context(|| format!("{}: cannot read", state_path.display()))?;
        let state: State = serde_json::from_slice(&bytes)
            .with_context(|| format!("{}: not a trainer state", state_path.display()))?;
        if state.config_digest != self.state.config_digest {
            bail!(
                "{}: the checkpoint was made with another configuration, data or model (digest {}, \
                 now {}); resume with the same flags and files",
                dir.display(),
                state.config_digest,
                self.state.config_digest
            );
        }
        let device = self.model.device().clone();
        let params = self.opt.params();
        let current = load_named(&dir.join(TRAINABLE), params, &device)?;
        // The best snapshot exists only under early stopping (which is part of the config digest, so
        // the checkpoint was made with it too) and once an evaluation has happened.
        let best = if self.config.early_stop_patience.is_some() && state.best_step.is_some() {
            let path = dir.join(BEST);
            if !path.exists() {
                bail!(
                    "{}: missing: the checkpoint has no copy of the best adapter (step {}), so early \
                     stopping cannot keep it; it was written by an older ft-train-lora",
                    path.display(),
                    state.best_step.unwrap_or(0)
                );
            }
            Some(load_named(&path, params, &device)?)
        } else {
            None
        };
        let moments = load_tensors(&dir.join(OPTIMIZER), &device)?;
        self.opt.load_state(&moments, state.step, &device)?;
        self.restore(&current)?;
        self.best = best;
        self.state = state;
        Ok(())
    }
}

/// Pairs tensors (in parameter order) with the parameter names.
fn named(params: &[(String, Var)], tensors: &[Tensor]) -> Vec<(String, Tensor)> {
    params
        .iter()
        .zip(tensors)
        .map(|((n, _), t)| (n.clone(), t.clone()))
        .collect()
}

/// Reads a file of named tensors back in parameter order, checking names and shapes.
fn load_named(path: &Path, params: &[(String, Var)], device: &Device) -> Result<Vec<Tensor>> {
    let mut saved: HashMap<String, Tensor> = load_tensors(path, device)?;
    params
        .iter()
        .map(|(name, var)| {
            let t = saved
                .remove(name)
                .with_context(|| format!("{}: has no {name}", path.display()))?;
            if t.dims() != var.dims() {
                bail!(
                    "{}: {name} has shape {:?}, the model has {:?}",
                    path.display(),
                    t.dims(),
                    var.dims()
                );
            }
            Ok(t.to_dtype(var.dtype())?)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::toy::{Bigram, Collect, config, rows};
    use crate::train::{LoopConfig, StepLog};

    /// A metrics line without its timings (which differ from run to run).
    fn untimed(l: &StepLog) -> (u64, f64, f64, f64, f64, u64) {
        (l.step, l.epoch, l.loss, l.lr, l.grad_norm, l.tokens)
    }

    fn table(m: &Bigram) -> Result<Vec<f32>> {
        Ok(m.table.as_tensor().flatten_all()?.to_vec1::<f32>()?)
    }

    /// The uninterrupted run, with a checkpoint after every update.
    struct Full {
        dir: tempfile::TempDir,
        model: Bigram,
        logs: Collect,
        state: State,
        stopped_early: bool,
        best: Option<Vec<f32>>,
    }

    fn full_run(cfg: &LoopConfig, val: &[crate::batch::Row]) -> Result<Full> {
        let dir = tempfile::tempdir()?;
        let r = rows();
        let model = Bigram::new(16)?;
        let mut t = Trainer::new(&model, cfg.clone(), &r, val, "d".into())?;
        t.out_dir = Some(dir.path().to_path_buf());
        let mut logs = Collect(vec![], vec![]);
        let out = t.run(&mut logs)?;
        let best = t
            .best
            .as_ref()
            .map(|b| b[0].flatten_all()?.to_vec1::<f32>())
            .transpose()?;
        drop(t);
        Ok(Full {
            dir,
            model,
            logs,
            state: State {
                elapsed_s: 0.0,
                ..out.state
            },
            stopped_early: out.stopped_early,
            best,
        })
    }

    /// Resumes from `checkpoint-<at>` of `full` and checks that the rest is the same run: metrics and
    /// evaluation lines after `at`, final weights, loop state, early stop and best snapshot.
    fn check_resume_from(
        full: &Full,
        cfg: &LoopConfig,
        val: &[crate::batch::Row],
        at: u64,
    ) -> Result<()> {
        let r = rows();
        let m2 = Bigram::new(16)?;
        let mut t2 = Trainer::new(&m2, cfg.clone(), &r, val, "d".into())?;
        t2.resume(&full.dir.path().join(format!("checkpoint-{at}")))?;
        let mut rest = Collect(vec![], vec![]);
        let out = t2.run(&mut rest)?;
        let after = |logs: &[StepLog]| -> Vec<_> {
            logs.iter().filter(|l| l.step > at).map(untimed).collect()
        };
        assert_eq!(after(&full.logs.0), after(&rest.0), "from step {at}");
        assert!(!rest.0.is_empty() || full.state.step == at);
        let evals = |logs: &Collect| -> Vec<(u64, f64)> {
            logs.1
                .iter()
                .filter(|e| e.step > at)
                .map(|e| (e.step, e.val_loss))
                .collect()
        };
        assert_eq!(evals(&full.logs), evals(&rest), "from step {at}");
        let state = State {
            elapsed_s: 0.0,
            ..out.state
        };
        assert_eq!(full.state, state, "from step {at}");
        assert_eq!(full.stopped_early, out.stopped_early, "from step {at}");
        let best = t2
            .best
            .as_ref()
            .map(|b| b[0].flatten_all()?.to_vec1::<f32>())
            .transpose()?;
        assert_eq!(full.best, best, "from step {at}");
        assert_eq!(table(&full.model)?, table(&m2)?, "from step {at}");
        Ok(())
    }

    #[test]
    fn resume_continues_the_same_trajectory() -> Result<()> {
        // 5 micro-batches per epoch, 2 per update: updates 1-3 are epoch 0, so checkpoint 3 ends an
        // epoch and checkpoint 4 sits inside epoch 1; warm-up (2 updates) and cosine decay keep the
        // learning rate changing every update, and evaluations come every 2.
        let cfg = LoopConfig {
            save_every: 1,
            max_steps: Some(8),
            ..config()
        };
        let r = rows();
        let full = full_run(&cfg, &r[..3])?;
        assert_eq!(full.logs.0.len(), 8);
        assert!(full.best.is_none(), "no snapshot without early stopping");
        for at in [1, 3, 4, 7] {
            check_resume_from(&full, &cfg, &r[..3], at)?;
        }
        let m = Bigram::new(16)?;
        let mut other = Trainer::new(&m, cfg, &r, &[], "other".into())?;
        let err = other
            .resume(&full.dir.path().join("checkpoint-4"))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("another configuration"), "{err}");
        Ok(())
    }

    /// Early stopping keeps the best adapter, also when it was found before the interruption.
    #[test]
    fn early_stopping_survives_a_resume() -> Result<()> {
        // A huge learning rate makes validation loss worse after the first evaluations.
        let cfg = LoopConfig {
            lr: 50.0,
            max_grad_norm: 0.0,
            eval_every: 1,
            early_stop_patience: Some(3),
            warmup_steps: 0,
            schedule: crate::optim::Schedule::Constant,
            epochs: 20,
            save_every: 1,
            ..config()
        };
        let r = rows();
        let val = &r[5..];
        let full = full_run(&cfg, val)?;
        assert!(full.stopped_early, "ran {} steps", full.state.step);
        let best_step = full.state.best_step.unwrap_or(0);
        let stop = full.state.step;
        assert_eq!(stop, best_step + 3);
        assert!(full.best.is_some());
        assert_ne!(full.best.as_deref(), Some(&table(&full.model)?[..]));
        // Before the best step, at it, between it and the stop (the current weights are not the best
        // ones), and at the stop itself (the checkpoint written by the update that stopped the run).
        for at in 1..=stop {
            check_resume_from(&full, &cfg, val, at)?;
        }
        Ok(())
    }

    #[test]
    fn a_checkpoint_without_the_best_adapter_is_refused() -> Result<()> {
        let cfg = LoopConfig {
            lr: 50.0,
            max_grad_norm: 0.0,
            eval_every: 1,
            early_stop_patience: Some(3),
            schedule: crate::optim::Schedule::Constant,
            max_steps: Some(2),
            save_every: 1,
            ..config()
        };
        let r = rows();
        let full = full_run(&cfg, &r[5..])?;
        let ck = full.dir.path().join("checkpoint-1");
        assert!(ck.join(BEST).exists());
        std::fs::remove_file(ck.join(BEST))?;
        let m = Bigram::new(16)?;
        let mut t = Trainer::new(&m, cfg, &r, &r[5..], "d".into())?;
        let before = table(&m)?;
        let err = t
            .resume(&ck)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("best adapter"), "{err}");
        assert_eq!(before, table(&m)?, "a failed resume changed the weights");
        Ok(())
    }
}
