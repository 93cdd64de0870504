//! Choosing the next token from logits: greedy, or temperature / top-k / top-p sampling with
//! our seeded [`Rng`]; and finding stop strings in decoded text.

use crate::rng::Rng;
use anyhow::{Result, bail};

/// Sampling settings of one generation call.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampling {
    /// 0 = greedy (argmax, lowest id on ties).
    pub temperature: f64,
    /// Keep the smallest set of most likely tokens whose probability reaches `top_p` (1 = off).
    pub top_p: f64,
    /// Keep the `top_k` most likely tokens (0 = off).
    pub top_k: usize,
}

impl Default for Sampling {
    fn default() -> Self {
        Self {
            temperature: 0.0,
            top_p: 1.0,
            top_k: 0,
        }
    }
}

impl Sampling {
    pub fn is_greedy(&self) -> bool {
        self.temperature <= 0.0 || self.top_k == 1
    }

    /// Errors for settings that cannot sample (negative temperature, top_p outside (0, 1]).
    pub fn validate(&self) -> Result<()> {
        if !self.temperature.is_finite() || self.temperature < 0.0 {
            bail!("temperature must be a finite number >= 0");
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            bail!("top_p must be in (0, 1]");
        }
        Ok(())
    }

    /// Pick a token from `logits` (one row; entries of disallowed tokens already `-inf`).
    pub fn pick(&self, logits: &[f32], rng: &mut Rng) -> Result<u32> {
        if logits.iter().any(|v| v.is_nan()) {
            bail!("the model produced NaN logits");
        }
        let mut best: Option<(usize, f32)> = None;
        for (i, &v) in logits.iter().enumerate() {
            if v > f32::NEG_INFINITY && best.is_none_or(|(_, b)| v > b) {
                best = Some((i, v));
            }
        }
        let Some((argmax, _)) = best else {
            bail!("no token is allowed at this step");
        };
        if self.is_greedy() {
            return Ok(argmax as u32);
        }
        let mut cand: Vec<(u32, f32)> = logits
            .iter()
            .enumerate()
            .filter(|(_, v)| **v > f32::NEG_INFINITY)
            .map(|(i, &v)| (i as u32, v))
            .collect();
        // Most likely first; ties by id so the order (and the draw) is deterministic.
        let desc = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        if self.top_k > 0 && self.top_k < cand.len() {
            cand.select_nth_unstable_by(self.top_k - 1, desc);
            cand.truncate(self.top_k);
        }
        cand.sort_unstable_by(desc);
        let max = f64::from(cand[0].1);
        let mut probs: Vec<f64> = cand
            .iter()
            .map(|&(_, v)| ((f64::from(v) - max) / self.temperature).exp())
            .collect();
        let total: f64 = probs.iter().sum();
        if self.top_p < 1.0 {
            let mut cum = 0.0;
            let mut keep = probs.len();
            for (i, p) in probs.iter().enumerate() {
                cum += p / total;
                if cum >= self.top_p {
                    keep = i + 1;
                    break;
                }
            }
            probs.truncate(keep);
        }
        let total: f64 = probs.iter().sum();
        let mut u = rng.uniform() * total;
        for (i, p) in probs.iter().enumerate() {
            if u < *p {
                return Ok(cand[i].0);
            }
            u -= p;
        }
        // Rounding left u just past the last kept token.
        Ok(cand[probs.len() - 1].0)
    }
}

/// Byte offset of the earliest occurrence of any of `stops` in `text`.
pub fn find_stop(text: &str, stops: &[String]) -> Option<usize> {
    stops
        .iter()
        .filter(|s| !s.is_empty())
        .filter_map(|s| text.find(s.as_str()))
        .min()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_the_first_maximum_among_allowed() -> Result<()> {
        let s = Sampling::default();
        let mut rng = Rng::new(1);
        assert_eq!(s.pick(&[0.0, 3.0, 3.0, -1.0], &mut rng)?, 1);
        assert_eq!(
            s.pick(&[f32::NEG_INFINITY, -5.0, f32::NEG_INFINITY], &mut rng)?,
            1
        );
        assert!(s.pick(&[f32::NEG_INFINITY; 3], &mut rng).is_err());
        assert!(s.pick(&[0.0, f32::NAN], &mut rng).is_err());
        Ok(())
    }

    #[test]
    fn top_k_and_top_p_restrict_the_draws() -> Result<()> {
        // Probabilities ∝ exp(logit): 0.643, 0.237, 0.087, 0.032 at temperature 1.
        let logits = [3.0f32, 2.0, 1.0, 0.0];
        let mut rng = Rng::new(5);
        let draw = |s: Sampling, rng: &mut Rng| -> Result<Vec<usize>> {
            let mut n = vec![0usize; 4];
            for _ in 0..4000 {
                n[s.pick(&logits, rng)? as usize] += 1;
            }
            Ok(n)
        };
        let base = Sampling {
            temperature: 1.0,
            ..Sampling::default()
        };
        let all = draw(base, &mut rng)?;
        assert!(all.iter().all(|&c| c > 0), "{all:?}");
        // Frequencies near the softmax (4000 draws: ±3% is > 4 sigma for p = 0.64).
        assert!((all[0] as f64 / 4000.0 - 0.643).abs() < 0.03, "{all:?}");
        let k2 = draw(Sampling { top_k: 2, ..base }, &mut rng)?;
        assert_eq!(&k2[2..], &[0, 0], "{k2:?}");
        // 0.643 < 0.8 <= 0.643 + 0.237: the two most likely tokens.
        let p8 = draw(Sampling { top_p: 0.8, ..base }, &mut rng)?;
        assert_eq!(&p8[2..], &[0, 0], "{p8:?}");
        assert!(p8[1] > 0);
        let p5 = draw(Sampling { top_p: 0.5, ..base }, &mut rng)?;
        assert_eq!(p5, vec![4000, 0, 0, 0]);
        Ok(())
    }

    #[test]
    fn low_temperature_sharpens() -> Result<()> {
        let logits = [1.0f32, 0.0];
        let mut rng = Rng::new(9);
        let cold = Sampling {
            temperature: 0.05,
            ..Sampling::default()
        };
        // exp(-20) ≈ 2e-9: the second token practically never comes up.
        for _ in 0..1000 {
            assert_eq!(cold.pick(&logits, &mut rng)?, 0);
        }
        Ok(())
    }

    #[test]
    fn stop_strings_are_found_at_their_earliest_position() {
        let stops = vec!["END".to_string(), "\n\n".to_string(), String::new()];
        assert_eq!(find_stop("abc\n\nxEND", &stops), Some(3));
        assert_eq!(find_stop("abEND\n\n", &stops), Some(2));
        assert_eq!(find_stop("abc", &stops), None);
    }
}
