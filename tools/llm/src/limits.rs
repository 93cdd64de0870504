//! Rate limits: token buckets for requests per minute and tokens per minute.
//!
//! A bucket refills continuously at `per_minute / 60` per second and holds at most one second's worth
//! (at least one request's cost), so a run starts without a burst. A take larger than what is there
//! borrows from the future: the caller sleeps until the debt is paid, so a request of any size passes.

use std::sync::Mutex;
use std::time::{Duration, Instant};

pub struct TokenBucket {
    rate: f64,
    capacity: f64,
    state: Mutex<(f64, Instant)>,
}

impl TokenBucket {
    pub fn per_minute(per_minute: f64) -> Self {
        let rate = per_minute / 60.0;
        let capacity = rate.max(1.0);
        Self {
            rate,
            capacity,
            state: Mutex::new((capacity, Instant::now())),
        }
    }

    /// Takes `cost` and returns how long to wait before acting.
    pub fn take(&self, cost: f64) -> Duration {
        let now = Instant::now();
        let mut st = match self.state.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let (tokens, last) = *st;
        let tokens =
            (tokens + now.duration_since(last).as_secs_f64() * self.rate).min(self.capacity) - cost;
        *st = (tokens, now);
        if tokens >= 0.0 {
            Duration::ZERO
        } else {
            // Saturates instead of panicking on a rate too small for the cost.
            Duration::try_from_secs_f64(-tokens / self.rate).unwrap_or(Duration::MAX)
        }
    }

    /// Gives back (or charges more) once the real cost is known.
    pub fn adjust(&self, delta: f64) {
        let mut st = match self.state.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        st.0 = (st.0 + delta).min(self.capacity);
    }
}

/// `--rpm` and `--tpm` together.
#[derive(Default)]
pub struct Limits {
    pub rpm: Option<TokenBucket>,
    pub tpm: Option<TokenBucket>,
}

impl Limits {
    /// Waits for one request of about `tokens` tokens.
    pub fn acquire(&self, tokens: u64) {
        let mut wait = Duration::ZERO;
        if let Some(b) = &self.rpm {
            wait = wait.max(b.take(1.0));
        }
        if let Some(b) = &self.tpm {
            wait = wait.max(b.take(tokens as f64));
        }
        if !wait.is_zero() {
            std::thread::sleep(wait);
        }
    }

    /// Settles the token bucket with the real usage of a request estimated at `estimate`.
    pub fn settle(&self, estimate: u64, actual: u64) {
        if let Some(b) = &self.tpm {
            b.adjust(estimate as f64 - actual as f64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_paces_after_its_capacity() {
        let b = TokenBucket::per_minute(600.0); // 10/s, capacity 10
        let waits: Vec<Duration> = (0..12).map(|_| b.take(1.0)).collect();
        assert!(waits[..10].iter().all(|w| w.is_zero()), "{waits:?}");
        // The 11th and 12th borrow about 0.1 s and 0.2 s.
        assert!(
            waits[10] > Duration::from_millis(50) && waits[10] < Duration::from_millis(150),
            "{waits:?}"
        );
        assert!(
            waits[11] > Duration::from_millis(150) && waits[11] < Duration::from_millis(250),
            "{waits:?}"
        );
        // A large take passes, with a proportional wait.
        let t = TokenBucket::per_minute(60_000.0); // 1000/s
        assert!(t.take(5000.0) > Duration::from_millis(3500));
    }
}
