//! How Hangar's tests wait, and how a fault scenario's recorded history is checked
//! ([`history`]).
//!
//! A test that needs something to happen waits for it with
//! [`eventually`]: the condition is checked until it holds or the deadline passes, and a wait that
//! runs out fails with what it waited for, where, and what it saw last. A fixed sleep belongs only
//! in a test that shows something did *not* happen, and the test says so where it sleeps.
//! [`eventually_every`] checks at a fixed pace, [`holds_within`] answers `None` instead of failing,
//! and [`eventually_blocking`] waits in a test without a runtime.
//!
//! ```no_run
//! # async fn demo(ready: impl AsyncFn() -> String) {
//! use hangar_testkit::{check, eventually};
//! use std::time::Duration;
//!
//! let state = eventually(Duration::from_secs(5), "the backend READY", async || {
//!     check(ready().await, |state| state == "READY")
//! })
//! .await;
//! # }
//! ```

pub mod history;
pub mod relay;

use std::fmt::Debug;
use std::panic::Location;
use std::time::Duration;
use tokio::time::Instant;

/// The first pause between two checks; each pause doubles, up to [`LONGEST_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_millis(5);

/// Short next to any deadline a test sets, and long enough that a check over gRPC, HTTP or the
/// Docker API does not keep the machine's two cores busy while it waits.
const LONGEST_PAUSE: Duration = Duration::from_millis(50);

/// What a condition of [`eventually`] answers: the wait is over (with a value), or not yet (with
/// what the condition saw, for the failure message).
pub trait Outcome {
    /// What [`eventually`] returns once the condition holds.
    type Value;

    /// `Ok` ends the wait; `Err` describes what was seen instead.
    fn into_outcome(self) -> Result<Self::Value, String>;
}

impl Outcome for bool {
    type Value = ();

    fn into_outcome(self) -> Result<(), String> {
        if self { Ok(()) } else { Err("false".into()) }
    }
}

impl<T> Outcome for Option<T> {
    type Value = T;

    fn into_outcome(self) -> Result<T, String> {
        self.ok_or_else(|| "None".into())
    }
}

/// `Err` is what the condition saw: the value that did not pass [`check`], or an error of a
/// call that is retried (a server not listening yet).
impl<T, E: Debug> Outcome for Result<T, E> {
    type Value = T;

    fn into_outcome(self) -> Result<T, String> {
        self.map_err(|seen| format!("{seen:?}"))
    }
}

/// `Ok(value)` when `accept` holds for it, `Err(value)` otherwise: the condition that reads
/// something and judges it, so that a wait that runs out shows what was read last.
pub fn check<T>(value: T, accept: impl FnOnce(&T) -> bool) -> Result<T, T> {
    if accept(&value) { Ok(value) } else { Err(value) }
}

/// Checks `condition` until it holds, and returns its value; panics when it still does not hold
/// `within` from now, naming `what` was awaited, the caller's line and the last thing seen.
///
/// The first check runs at once; the pauses between checks grow from 5 ms to 50 ms. A check
/// still running at the deadline fails the wait too, so a condition that hangs cannot outlast it.
#[track_caller]
pub fn eventually<O, F>(within: Duration, what: &str, condition: F) -> impl Future<Output = O::Value>
where
    O: Outcome,
    F: AsyncFnMut() -> O,
{
    let caller = Location::caller();
    async move { poll(within, Pace::Backoff, condition).await.unwrap_or_else(|out| out.fail(caller, within, what)) }
}

/// [`eventually`] with a fixed pause of `every` between checks, for a condition whose every check
/// does work the test records or the system under test must serve (a Connect that spawns a
/// backend, say), where checking every 50 ms would only load the machine.
#[track_caller]
pub fn eventually_every<O, F>(
    within: Duration,
    every: Duration,
    what: &str,
    condition: F,
) -> impl Future<Output = O::Value>
where
    O: Outcome,
    F: AsyncFnMut() -> O,
{
    let caller = Location::caller();
    async move { poll(within, Pace::Every(every), condition).await.unwrap_or_else(|out| out.fail(caller, within, what)) }
}

/// Checks `condition` as [`eventually`] does, but a wait that runs out is an answer (`None`), not
/// a failure: for a test that reports how soon something happened and fails on it only when it
/// is run strictly.
pub async fn holds_within<O, F>(within: Duration, condition: F) -> Option<O::Value>
where
    O: Outcome,
    F: AsyncFnMut() -> O,
{
    poll(within, Pace::Backoff, condition).await.ok()
}

/// [`eventually`] for a synchronous test (no runtime): the condition is checked on this thread,
/// which sleeps between checks. A check that hangs cannot be cut off here: the condition must
/// return.
#[track_caller]
pub fn eventually_blocking<O, F>(within: Duration, what: &str, mut condition: F) -> O::Value
where
    O: Outcome,
    F: FnMut() -> O,
{
    let deadline = std::time::Instant::now() + within;
    let mut pause = FIRST_PAUSE;
    let mut checks = 0u32;
    loop {
        checks += 1;
        let seen = match condition().into_outcome() {
            Ok(value) => return value,
            Err(seen) => seen,
        };
        let now = std::time::Instant::now();
        if now + pause >= deadline {
            std::thread::sleep(deadline.saturating_duration_since(now));
            TimedOut { checks, seen: Some(seen) }.fail(Location::caller(), within, what);
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(LONGEST_PAUSE);
    }
}

/// How long a wait pauses between checks.
#[derive(Clone, Copy)]
enum Pace {
    /// From [`FIRST_PAUSE`], doubling up to [`LONGEST_PAUSE`].
    Backoff,
    /// Always this long.
    Every(Duration),
}

/// A wait that ran out: after how many checks, and what the last one saw (`None`: it was still
/// running at the deadline).
struct TimedOut {
    checks: u32,
    seen: Option<String>,
}

impl TimedOut {
    fn fail(self, caller: &Location<'_>, within: Duration, what: &str) -> ! {
        let Self { checks, seen } = self;
        match seen {
            Some(seen) => {
                panic!("{caller}: timed out after {within:?} waiting for {what} ({checks} checks); last seen: {seen}")
            }
            None => panic!(
                "{caller}: timed out after {within:?} waiting for {what}: check {checks} was still running at the \
                 deadline"
            ),
        }
    }
}

/// The checks of a wait, until `condition` holds or `within` has passed.
async fn poll<O, F>(within: Duration, pace: Pace, mut condition: F) -> Result<O::Value, TimedOut>
where
    O: Outcome,
    F: AsyncFnMut() -> O,
{
    let deadline = Instant::now() + within;
    let mut pause = match pace {
        Pace::Backoff => FIRST_PAUSE,
        Pace::Every(every) => every,
    };
    let mut checks = 0u32;
    loop {
        checks += 1;
        let seen = match tokio::time::timeout_at(deadline, condition()).await {
            Ok(outcome) => match outcome.into_outcome() {
                Ok(value) => return Ok(value),
                Err(seen) => seen,
            },
            Err(_) => return Err(TimedOut { checks, seen: None }),
        };
        if Instant::now() + pause >= deadline {
            tokio::time::sleep_until(deadline).await;
            return Err(TimedOut { checks, seen: Some(seen) });
        }
        tokio::time::sleep(pause).await;
        if let Pace::Backoff = pace {
            pause = (pause * 2).min(LONGEST_PAUSE);
        }
    }
}

/// A loopback address (`127.0.0.1:PORT`) with no listener, for a process a test starts later
/// that must listen at an address known before it starts (a proxy named in a controller's
/// `--proxy-url`, or one restarted at the same address).
///
/// The port is taken below the kernel's ephemeral range (`net.ipv4.ip_local_port_range`). A port
/// from `bind(…:0)` comes from that range, and so does the local port of every outgoing
/// connection any concurrent test opens: once its listener is dropped, such a port can be taken
/// by another socket before the process meant for it binds it. Below the range only another
/// test's explicit pick can take it; the picks of one test process never repeat, and those of
/// concurrent processes start at different places.
pub fn free_address() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    const LOWEST: u32 = 10_000;
    let ephemeral_start = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u32>().ok())
        .filter(|start| *start > LOWEST + 1_000)
        .unwrap_or(32_768);
    let span = ephemeral_start - LOWEST;
    static START: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    let seed = *START.get_or_init(|| {
        std::process::id().wrapping_mul(7_919)
            ^ std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |t| t.subsec_nanos())
    });
    for _ in 0..span {
        let step = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = LOWEST + seed.wrapping_add(step) % span;
        let address = format!("127.0.0.1:{port}");
        if std::net::TcpListener::bind(&address).is_ok() {
            return address;
        }
    }
    panic!("no free loopback port between {LOWEST} and {ephemeral_start}")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The message of the panic that ends `wait`, run on a runtime of its own thread.
    fn panic_message(wait: impl AsyncFnOnce() + Send + 'static) -> String {
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
            runtime.block_on(wait());
        });
        let panic = thread.join().expect_err("the wait failed");
        panic.downcast::<String>().map(|m| *m).expect("a formatted panic message")
    }

    #[tokio::test]
    async fn returns_the_value_once_the_condition_holds() {
        let mut calls = 0;
        let value = eventually(Duration::from_secs(5), "the third call", async || {
            calls += 1;
            check(calls, |n| *n == 3)
        })
        .await;
        assert_eq!((value, calls), (3, 3));
    }

    #[tokio::test]
    async fn a_bool_or_an_option_is_a_condition_too() {
        let mut flips = 0;
        eventually(Duration::from_secs(5), "the third flip", async || {
            flips += 1;
            flips == 3
        })
        .await;
        assert_eq!(flips, 3);
        let found = eventually(Duration::from_secs(5), "a value", async || Some("here")).await;
        assert_eq!(found, "here");
    }

    #[test]
    fn a_wait_that_runs_out_names_what_it_awaited_where_and_what_it_saw_last() {
        let started = Instant::now();
        let message = panic_message(async || {
            let mut reads = 0;
            eventually(Duration::from_millis(200), "the answer", async || {
                reads += 1;
                check(reads, |_| false)
            })
            .await;
        });
        assert!(started.elapsed() >= Duration::from_millis(200), "not before the deadline");
        assert!(message.contains("waiting for the answer"), "{message}");
        assert!(message.contains(file!()), "the caller's file: {message}");
        let checks: u32 = message.split(" (").nth(1).unwrap().split(' ').next().unwrap().parse().unwrap();
        assert!(checks > 3, "checked again and again: {message}");
        assert!(message.ends_with(&format!("last seen: {checks}")), "{message}");
    }

    #[test]
    fn a_check_that_hangs_fails_the_wait_at_the_deadline() {
        let started = Instant::now();
        let message = panic_message(async || {
            eventually(Duration::from_millis(100), "a reply", async || std::future::pending::<bool>().await).await;
        });
        assert!(started.elapsed() < Duration::from_secs(5), "cut off at the deadline");
        assert!(message.contains("check 1 was still running"), "{message}");
    }

    #[test]
    fn a_blocking_wait_returns_the_value_once_the_condition_holds_and_fails_like_the_async_one() {
        let mut calls = 0;
        let value = eventually_blocking(Duration::from_secs(5), "the third call", || {
            calls += 1;
            check(calls, |n| *n == 3)
        });
        assert_eq!((value, calls), (3, 3));

        let started = std::time::Instant::now();
        let thread = std::thread::spawn(|| {
            eventually_blocking(Duration::from_millis(200), "a flag", || false);
        });
        let message = *thread.join().expect_err("the wait failed").downcast::<String>().unwrap();
        assert!(started.elapsed() >= Duration::from_millis(200), "not before the deadline");
        assert!(message.contains("waiting for a flag"), "{message}");
        assert!(message.contains(file!()), "the caller's file: {message}");
        assert!(message.ends_with("last seen: false"), "{message}");
    }

    #[tokio::test]
    async fn a_paced_wait_checks_no_more_often_than_it_was_asked_to() {
        let started = Instant::now();
        let mut calls = 0;
        eventually_every(Duration::from_secs(5), Duration::from_millis(100), "the fourth call", async || {
            calls += 1;
            calls == 4
        })
        .await;
        assert!(started.elapsed() >= Duration::from_millis(300), "three pauses of 100 ms: {:?}", started.elapsed());
    }

    #[tokio::test]
    async fn a_wait_that_may_run_out_answers_none_at_its_deadline_instead_of_failing() {
        let started = Instant::now();
        assert_eq!(holds_within(Duration::from_millis(100), async || None::<u8>).await, None);
        assert!(started.elapsed() >= Duration::from_millis(100), "not before the deadline");
        let hung = holds_within(Duration::from_millis(100), async || std::future::pending::<bool>().await).await;
        assert_eq!(hung, None, "a check that hangs is cut off too");
        assert_eq!(holds_within(Duration::from_secs(5), async || Some(7)).await, Some(7));
    }
}
