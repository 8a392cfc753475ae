//! Token-bucket rate limits, per connection and per (sender, recipient) or (requester, target)
//! pair.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A token bucket: `rate` tokens per `period`, holding at most `burst`.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    /// Tokens available now.
    tokens: f64,
    /// When `tokens` was last brought up to date.
    updated: Instant,
}

/// The parameters of a bucket.
#[derive(Debug, Clone, Copy)]
pub struct Rate {
    /// Tokens added per second.
    per_second: f64,
    /// Most tokens held.
    burst: f64,
}

impl Rate {
    /// `count` per `period`, with a burst of `burst`. A zero count means unlimited.
    pub fn new(count: u32, period: Duration, burst: u32) -> Option<Self> {
        (count > 0).then(|| Self {
            per_second: f64::from(count) / period.as_secs_f64(),
            burst: f64::from(burst.max(1)),
        })
    }
}

impl TokenBucket {
    /// A full bucket.
    pub fn full(rate: Rate, now: Instant) -> Self {
        Self { tokens: rate.burst, updated: now }
    }

    /// Takes a token, or says how long until one is available.
    pub fn take(&mut self, rate: Rate, now: Instant) -> Result<(), Duration> {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate.per_second).min(rate.burst);
        self.updated = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / rate.per_second))
        }
    }

    /// Whether the bucket has refilled completely (and can be forgotten).
    fn is_full(&self, rate: Rate, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens + elapsed * rate.per_second >= rate.burst
    }
}

/// Buckets keyed by a pair of users, forgotten once full again so memory tracks active pairs.
#[derive(Debug)]
pub struct KeyedLimiter<K> {
    /// The rate; `None` for unlimited.
    rate: Option<Rate>,
    /// Buckets of keys seen recently.
    buckets: Mutex<HashMap<K, TokenBucket>>,
}

impl<K: Hash + Eq + Clone> KeyedLimiter<K> {
    /// A limiter with `rate` (`None`: unlimited).
    pub fn new(rate: Option<Rate>) -> Self {
        Self { rate, buckets: Mutex::new(HashMap::new()) }
    }

    /// Takes a token for `key`, or says how long to wait.
    pub fn check(&self, key: &K, now: Instant) -> Result<(), Duration> {
        let Some(rate) = self.rate else { return Ok(()) };
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        match buckets.get_mut(key) {
            Some(bucket) => bucket.take(rate, now),
            None => {
                let mut bucket = TokenBucket::full(rate, now);
                let result = bucket.take(rate, now);
                buckets.insert(key.clone(), bucket);
                result
            }
        }
    }

    /// Drops buckets that have refilled. Called periodically.
    pub fn sweep(&self, now: Instant) {
        let Some(rate) = self.rate else { return };
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        buckets.retain(|_, bucket| !bucket.is_full(rate, now));
    }

    /// How many buckets are held.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.buckets.lock().map(|b| b.len()).unwrap_or(0)
    }

    /// Whether no buckets are held.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bursts_then_refills_at_the_rate() {
        let rate = Rate::new(10, Duration::from_secs(1), 3).unwrap();
        let start = Instant::now();
        let mut bucket = TokenBucket::full(rate, start);
        for _ in 0..3 {
            assert!(bucket.take(rate, start).is_ok());
        }
        let wait = bucket.take(rate, start).unwrap_err();
        assert!(wait <= Duration::from_millis(100) && wait > Duration::ZERO);
        assert!(bucket.take(rate, start + Duration::from_millis(100)).is_ok());
    }

    #[test]
    fn keyed_limiter_forgets_idle_keys() {
        let limiter = KeyedLimiter::new(Rate::new(1, Duration::from_secs(1), 1));
        let start = Instant::now();
        assert!(limiter.check(&"a", start).is_ok());
        assert!(limiter.check(&"a", start).is_err());
        assert!(limiter.check(&"b", start).is_ok());
        limiter.sweep(start + Duration::from_secs(2));
        assert!(limiter.is_empty());
        assert!(KeyedLimiter::<u8>::new(None).check(&1, start).is_ok());
    }
}
