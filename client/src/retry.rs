//! Retries with exponential backoff for idempotent calls that failed with UNAVAILABLE, or that
//! the controller's rate limit refused (RATE_LIMITED, after the wait it names).

use crate::ClientError;
use std::future::Future;
use std::hash::{BuildHasher, RandomState};
use std::time::Duration;

/// How often and how patiently an idempotent call (list, get, undrain, a keyed Connect) is
/// repeated after UNAVAILABLE or RATE_LIMITED. Calls with effects (drain, terminate, a keyless Connect) are never
/// repeated by the client.
/// The longest wait a RATE_LIMITED answer can impose on one retry.
const RATE_LIMIT_WAIT_MAX: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in total, the first included; 1 disables retries.
    pub max_attempts: u32,
    /// Wait before the second attempt; doubled after each further failure.
    pub initial_backoff: Duration,
    /// Upper bound of one wait.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 4,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
        }
    }
}

impl RetryPolicy {
    /// No retries: every failure reaches the caller at once.
    pub fn none() -> Self {
        RetryPolicy { max_attempts: 1, ..RetryPolicy::default() }
    }

    /// The wait after failed attempt `attempt` (1-based): exponential, capped, with "equal
    /// jitter" (between half and all of it) so that many clients cut off together do not come
    /// back together.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let exp = self.initial_backoff.saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1)));
        let capped = exp.min(self.max_backoff);
        let half = capped / 2;
        let jitter = RandomState::new().hash_one(attempt) % (half.as_nanos() as u64).max(1);
        half + Duration::from_nanos(jitter)
    }

    /// Runs `call` until it succeeds, fails with an error that is not retryable, or the attempts
    /// run out.
    pub async fn run<T, F, Fut>(&self, mut call: F) -> Result<T, ClientError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, ClientError>>,
    {
        let mut attempt = 1;
        loop {
            match call().await {
                Err(err) if err.is_retryable() && attempt < self.max_attempts => {
                    // A rate limit says when a token will be there; waiting less only spends the
                    // next attempt (but a wait is never longer than RATE_LIMIT_WAIT_MAX).
                    let backoff = self.backoff(attempt);
                    let wait = err.retry_after().map_or(backoff, |asked| asked.min(RATE_LIMIT_WAIT_MAX).max(backoff));
                    tracing::debug!(attempt, ?wait, error = %err, "retrying");
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
                result => return result,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn rate_limited(after_ms: u64) -> ClientError {
        let status = hangar::error::status_with_retry(
            tonic::Code::ResourceExhausted,
            "slow down",
            hangar::error::reason::RATE_LIMITED,
            &[],
            Duration::from_millis(after_ms),
        );
        ClientError::from(status)
    }

    #[tokio::test]
    async fn a_rate_limited_call_is_retried_after_the_wait_the_controller_names() {
        let calls = AtomicU32::new(0);
        let started = tokio::time::Instant::now();
        let result = fast(3)
            .run(|| async {
                match calls.fetch_add(1, Ordering::SeqCst) {
                    0 => Err(rate_limited(30)),
                    _ => Ok("done"),
                }
            })
            .await;
        assert_eq!(result.unwrap(), "done");
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        assert!(started.elapsed() >= Duration::from_millis(30), "waited {:?}", started.elapsed());
        // Other RESOURCE_EXHAUSTED answers (a watch limit) are not retried.
        let limited = ClientError::from(hangar::error::status_with_reason(
            tonic::Code::ResourceExhausted,
            "too many watches",
            hangar::error::reason::WATCH_LIMIT_REACHED,
            &[],
        ));
        assert!(!limited.is_retryable());
    }

    fn unavailable() -> ClientError {
        ClientError::from(tonic::Status::unavailable("connection refused"))
    }

    fn fast(max_attempts: u32) -> RetryPolicy {
        RetryPolicy { max_attempts, initial_backoff: Duration::from_millis(1), max_backoff: Duration::from_millis(2) }
    }

    #[tokio::test]
    async fn unavailable_is_retried_until_the_call_succeeds() {
        let calls = AtomicU32::new(0);
        let result = fast(4)
            .run(|| async { if calls.fetch_add(1, Ordering::SeqCst) < 2 { Err(unavailable()) } else { Ok("listed") } })
            .await;
        assert_eq!(result.unwrap(), "listed");
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn retries_stop_after_max_attempts_with_the_last_error() {
        let calls = AtomicU32::new(0);
        let result: Result<(), _> = fast(3)
            .run(|| async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(unavailable())
            })
            .await;
        assert!(matches!(result, Err(ClientError::Unavailable { .. })));
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn not_found_is_not_retried() {
        let calls = AtomicU32::new(0);
        let result: Result<(), _> = fast(4)
            .run(|| async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(ClientError::from(tonic::Status::not_found("no node")))
            })
            .await;
        assert!(matches!(result, Err(ClientError::NotFound { .. })));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn backoff_grows_and_stays_under_the_cap() {
        let policy = RetryPolicy::default();
        for attempt in 1..20 {
            let wait = policy.backoff(attempt);
            assert!(wait <= policy.max_backoff, "attempt {attempt}: {wait:?}");
        }
        assert!(policy.backoff(1) >= Duration::from_millis(50));
        assert!(policy.backoff(1) <= Duration::from_millis(100));
        assert!(policy.backoff(10) >= policy.max_backoff / 2);
    }
}
