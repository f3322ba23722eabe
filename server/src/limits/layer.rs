//! [`LimitLayer`]: the per-caller limits, as a tower layer on every service of the controller.

use super::counters::{Occupancy, SlotKind};
use super::released_body::ReleasedAtEnd;
use super::{CallerKey, LimitsConfig};
use crate::api::ApiError;
use governor::clock::{Clock, DefaultClock};
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};
use std::future::Future;
use std::num::NonZeroU32;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// How often the rate limiter forgets callers whose buckets are full again, so that its memory
/// follows the callers of the last few seconds rather than every caller ever seen.
const FORGET_IDLE_EVERY: Duration = Duration::from_secs(10);

/// What a call is, for the limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallKind {
    /// Rate-limited and counted while in flight.
    Unary,
    /// A long-lived stream a caller opens to follow changes: opening it is rate-limited, and
    /// it counts against the caller's watches until it ends.
    Watch,
    /// Not limited here: a node's `Attach` (one stream per node, replaced by the node's next
    /// one) and health checks (a probe must see the truth when others on its address flood).
    Exempt,
}

impl CallKind {
    /// The kind of the method at `path` (`/package.Service/Method`).
    pub fn of(path: &str) -> CallKind {
        let Some((service, method)) = path.strip_prefix('/').and_then(|p| p.split_once('/')) else {
            return CallKind::Unary;
        };
        match (service, method) {
            ("hangar.v1.DroneService" | "hangar.v1.ProxyService", "Attach") => CallKind::Exempt,
            ("grpc.health.v1.Health", "Check") => CallKind::Exempt,
            (_, "ServerReflectionInfo") => CallKind::Watch,
            (_, method) if method.starts_with("Watch") => CallKind::Watch,
            _ => CallKind::Unary,
        }
    }
}

type KeyedLimiter = RateLimiter<CallerKey, DefaultKeyedStateStore<CallerKey>, DefaultClock>;

/// The limits' shared state: one per controller, shared by every connection.
struct Limits {
    config: LimitsConfig,
    /// `None` when the rate limit is off.
    rate: Option<KeyedLimiter>,
    occupancy: Occupancy,
    /// When the rate limiter next forgets idle callers, in milliseconds since `started`.
    next_forget_ms: AtomicU64,
    started: Instant,
}

impl Limits {
    /// Takes a request token from `key`'s bucket; how long until the next one otherwise.
    fn admit_rate(&self, key: &CallerKey) -> Result<(), Duration> {
        let Some(rate) = &self.rate else { return Ok(()) };
        self.forget_idle_now_and_then(rate);
        rate.check_key(key).map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }

    fn forget_idle_now_and_then(&self, rate: &KeyedLimiter) {
        let now_ms = self.started.elapsed().as_millis() as u64;
        let due = self.next_forget_ms.load(Ordering::Relaxed);
        let next = now_ms + FORGET_IDLE_EVERY.as_millis() as u64;
        // One caller does it; the others go on.
        if now_ms >= due
            && self.next_forget_ms.compare_exchange(due, next, Ordering::Relaxed, Ordering::Relaxed).is_ok()
        {
            rate.retain_recent();
            rate.shrink_to_fit();
        }
    }

    /// Admits a call of `kind` from `key`, or says which limit it is over.
    fn admit(&self, key: &CallerKey, kind: CallKind) -> Result<Admitted, ApiError> {
        let config = &self.config;
        if kind == CallKind::Exempt {
            return Ok(Admitted::Free);
        }
        self.admit_rate(key).map_err(|retry_after| ApiError::RateLimited {
            retry_after,
            rate: config.rate_per_second,
            burst: config.burst,
        })?;
        match kind {
            CallKind::Unary => self
                .occupancy
                .try_take(key, SlotKind::Call, config.max_concurrent_calls)
                .map(Admitted::Call)
                .ok_or(ApiError::ConcurrencyLimited { limit: config.max_concurrent_calls }),
            CallKind::Watch => self
                .occupancy
                .try_take(key, SlotKind::Watch, config.max_watches)
                .map(Admitted::Watch)
                .ok_or(ApiError::WatchLimitReached { limit: config.max_watches }),
            CallKind::Exempt => Ok(Admitted::Free),
        }
    }
}

/// What an admitted call holds while it runs.
enum Admitted {
    Free,
    /// Given back when the call's response is ready.
    Call(super::counters::Slot),
    /// Given back when the stream's body ends or is dropped.
    Watch(super::counters::Slot),
}

/// Applies [`LimitsConfig`]'s per-caller limits to every call. It goes after authentication, so
/// that a caller is known by its principal ([`CallerKey`]).
#[derive(Clone)]
pub struct LimitLayer {
    limits: Arc<Limits>,
}

impl LimitLayer {
    pub fn new(config: LimitsConfig) -> LimitLayer {
        let rate = NonZeroU32::new(config.rate_per_second).map(|per_second| {
            let burst = NonZeroU32::new(config.burst).unwrap_or(per_second);
            RateLimiter::dashmap(Quota::per_second(per_second).allow_burst(burst))
        });
        let limits = Limits {
            config,
            rate,
            occupancy: Occupancy::default(),
            next_forget_ms: AtomicU64::new(FORGET_IDLE_EVERY.as_millis() as u64),
            started: Instant::now(),
        };
        LimitLayer { limits: Arc::new(limits) }
    }
}

impl<S> tower::Layer<S> for LimitLayer {
    type Service = LimitService<S>;

    fn layer(&self, inner: S) -> LimitService<S> {
        LimitService { inner, limits: self.limits.clone() }
    }
}

/// The service [`LimitLayer`] wraps around the controller's routes.
#[derive(Clone)]
pub struct LimitService<S> {
    inner: S,
    limits: Arc<Limits>,
}

type ResponseFuture<E> = Pin<Box<dyn Future<Output = Result<http::Response<tonic::body::Body>, E>> + Send>>;

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for LimitService<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    ResBody::Error: Into<tonic::codegen::StdError>,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let kind = CallKind::of(request.uri().path());
        let key = CallerKey::of(request.extensions());
        let admitted = match self.limits.admit(&key, kind) {
            Ok(admitted) => admitted,
            Err(refused) => {
                tracing::debug!(caller = %key, method = request.uri().path(), reason = %refused, "call refused by a limit");
                let response = tonic::Status::from(refused).into_http();
                return Box::pin(std::future::ready(Ok(response)));
            }
        };
        // The clone that was made ready serves this call; the fresh one waits for the next.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let response = inner.call(request).await?;
            Ok(match admitted {
                Admitted::Watch(slot) => {
                    response.map(|body| tonic::body::Body::new(ReleasedAtEnd::new(tonic::body::Body::new(body), slot)))
                }
                // A unary call's work is done once its response is ready.
                Admitted::Call(slot) => {
                    drop(slot);
                    response.map(tonic::body::Body::new)
                }
                Admitted::Free => response.map(tonic::body::Body::new),
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attach_and_health_checks_are_exempt_watches_and_reflection_are_streams_the_rest_is_unary() {
        let cases = [
            ("/hangar.v1.DroneService/Attach", CallKind::Exempt),
            ("/hangar.v1.ProxyService/Attach", CallKind::Exempt),
            ("/grpc.health.v1.Health/Check", CallKind::Exempt),
            ("/grpc.health.v1.Health/Watch", CallKind::Watch),
            ("/hangar.v1.NodeService/WatchNodes", CallKind::Watch),
            ("/hangar.v1.BackendService/WatchBackend", CallKind::Watch),
            ("/hangar.v1.BackendService/WatchBackends", CallKind::Watch),
            ("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo", CallKind::Watch),
            ("/hangar.v1.BackendService/Connect", CallKind::Unary),
            ("/hangar.v1.ProxyService/LookupRoute", CallKind::Unary),
            ("/no-method", CallKind::Unary),
            ("", CallKind::Unary),
        ];
        for (path, kind) in cases {
            assert_eq!(CallKind::of(path), kind, "{path}");
        }
    }

    fn limits(config: LimitsConfig) -> Arc<Limits> {
        LimitLayer::new(config).limits
    }

    #[test]
    fn a_burst_passes_then_the_rate_refuses_with_a_delay_and_other_callers_are_untouched() {
        let limits = limits(LimitsConfig { rate_per_second: 1, burst: 3, ..LimitsConfig::default() });
        let (a, b) = (CallerKey::Principal("a".into()), CallerKey::Principal("b".into()));
        for _ in 0..3 {
            assert!(limits.admit(&a, CallKind::Unary).is_ok());
        }
        match limits.admit(&a, CallKind::Watch) {
            Err(ApiError::RateLimited { retry_after, rate: 1, burst: 3 }) => {
                assert!(retry_after > Duration::ZERO && retry_after <= Duration::from_secs(1), "{retry_after:?}")
            }
            other => panic!("expected RateLimited, got {:?}", other.map(|_| ())),
        }
        assert!(limits.admit(&b, CallKind::Unary).is_ok());
        assert!(limits.admit(&a, CallKind::Exempt).is_ok(), "an exempt call never waits");
    }

    #[test]
    fn calls_and_watches_are_capped_per_caller_and_zero_turns_a_limit_off() {
        let config = LimitsConfig { max_concurrent_calls: 1, max_watches: 1, ..LimitsConfig::default() };
        let limits = limits(config);
        let key = CallerKey::Unknown;
        let call = limits.admit(&key, CallKind::Unary).unwrap();
        assert!(matches!(limits.admit(&key, CallKind::Unary), Err(ApiError::ConcurrencyLimited { limit: 1 })));
        let watch = limits.admit(&key, CallKind::Watch).unwrap();
        assert!(matches!(limits.admit(&key, CallKind::Watch), Err(ApiError::WatchLimitReached { limit: 1 })));
        drop((call, watch));
        assert!(limits.admit(&key, CallKind::Watch).is_ok());

        let off = self::limits(LimitsConfig::default().per_caller_off());
        let held: Vec<_> = (0..1000).map(|_| off.admit(&key, CallKind::Watch).unwrap()).collect();
        assert_eq!(held.len(), 1000);
    }
}
