//! A recorded history of a fault scenario, and the checks that read all of it.
//!
//! A scenario records what its clients did and saw (every `Connect` with when it was sent, when
//! it was answered and what it answered), what the backends said of themselves (the key and
//! `HANGAR_FENCING_TOKEN` they were started with, when they began and stopped serving), what
//! every watcher received, the store's log of revisions, and how every backend ended. Then
//! [`History::check`] looks for what must never happen, whatever the faults:
//!
//! - a key with two live backends at once, by the backends' own reports;
//! - a fencing token that does not grow: per key, each backend's token must be above the one of
//!   the backend that served the key before it, and a `Connect` answered after another one was
//!   answered must not hand out a smaller token for the key;
//! - a watcher that missed a revision, saw one twice or out of order, compared with the store's
//!   log over the revisions it claims to have followed (across its resumes);
//! - a backend that did not end TERMINATED with a reason;
//! - an acknowledged `Connect` whose backend the control plane no longer knows, or that reports
//!   another key or token than the `Connect` answered.
//!
//! Times are offsets from the start of the recording, all read from one clock (the test's): the
//! backends' reports must be converted to it by whoever collects them. The checks are exact; a
//! scenario that cannot read one clock must widen intervals itself, and say so.
//!
//! ```
//! use hangar_testkit::history::{BackendLife, Final, History};
//! use std::time::Duration;
//!
//! let s = Duration::from_secs;
//! let mut history = History::default();
//! history.lives.push(BackendLife::new("bk-1", "doc", 1, s(0), Some(s(5))));
//! history.lives.push(BackendLife::new("bk-2", "doc", 2, s(4), Some(s(9))));
//! history.finals.push(Final::terminated("bk-1", "EXTERNAL"));
//! history.finals.push(Final::terminated("bk-2", "EXTERNAL"));
//! let report = history.check();
//! assert_eq!(report.violations.len(), 1, "bk-2 started before bk-1 ended: {report}");
//! ```

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A moment of the history: time since the recording began.
pub type At = Duration;

/// One `Connect` call as its client saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectCall {
    /// The key asked for (`namespace/name`, say); calls without a key are not recorded.
    pub key: String,
    pub invoked: At,
    pub completed: At,
    pub outcome: ConnectOutcome,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectOutcome {
    /// Acknowledged: this backend serves the key, with this fencing token.
    Ok { backend_id: String, fencing_token: u64 },
    /// Refused or failed (a status code, say): the call may or may not have taken effect.
    Failed(String),
}

/// A backend's report of itself: the key and fencing token it was started with, and when it
/// served (`ended`: `None` while it still serves when the history ends).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendLife {
    pub backend_id: String,
    pub key: String,
    pub fencing_token: u64,
    pub started: At,
    pub ended: Option<At>,
}

impl BackendLife {
    pub fn new(backend_id: &str, key: &str, fencing_token: u64, started: At, ended: Option<At>) -> Self {
        BackendLife { backend_id: backend_id.into(), key: key.into(), fencing_token, started, ended }
    }

    fn overlaps(&self, other: &BackendLife) -> bool {
        let before = |a: &BackendLife, b: &BackendLife| a.ended.is_some_and(|end| end <= b.started);
        !before(self, other) && !before(other, self)
    }
}

/// What one watcher received over its whole life, resumes included: it followed the changes
/// after revision `from` up to and including `until` (the last revision it knows it caught up
/// with: its last event, or a bookmark).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatcherLog {
    pub watcher: String,
    pub from: u64,
    pub until: u64,
    /// Revisions of the events received, in the order received.
    pub received: Vec<u64>,
}

/// How a backend ended, as the control plane tells at the end of the history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Final {
    pub backend_id: String,
    /// `TERMINATED` when it ended.
    pub state: String,
    pub reason: Option<String>,
}

impl Final {
    pub fn terminated(backend_id: &str, reason: &str) -> Self {
        Final { backend_id: backend_id.into(), state: "TERMINATED".into(), reason: Some(reason.into()) }
    }
}

/// Everything a scenario recorded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct History {
    pub connects: Vec<ConnectCall>,
    pub lives: Vec<BackendLife>,
    pub watchers: Vec<WatcherLog>,
    /// Every revision the store committed (its change log), for the watchers' checks; in any
    /// order.
    pub store_revisions: Vec<u64>,
    pub finals: Vec<Final>,
}

/// What must never happen, as found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Violation {
    /// Two backends served `key` at once.
    TwoOwners { key: String, first: String, second: String, from: At },
    /// `later` served `key` after `earlier`, with a token that is not greater.
    TokenNotGrowing { key: String, earlier: (String, u64), later: (String, u64) },
    /// A Connect for `key` sent after another one was answered got a smaller token.
    ConnectTokenShrank { key: String, earlier: (String, u64), later: (String, u64), at: At },
    /// A Connect answered a token the backend does not report.
    ConnectTokenMismatch { backend_id: String, answered: u64, reported: u64 },
    /// A Connect for `key` answered a backend that reports serving another key.
    ConnectKeyMismatch { key: String, backend_id: String, reported: String },
    /// The watcher never received `revision`, which the store committed in its range.
    WatchMissed { watcher: String, revision: u64 },
    /// The watcher received `revision` more than once.
    WatchRepeated { watcher: String, revision: u64 },
    /// The watcher received `revision` after a later one.
    WatchOutOfOrder { watcher: String, revision: u64, after: u64 },
    /// The watcher received a revision the store never committed in its range.
    WatchUnknown { watcher: String, revision: u64 },
    /// The backend did not end TERMINATED with a reason (`state` is where it ended).
    NotTerminated { backend_id: String, state: String, reason: Option<String> },
    /// An acknowledged Connect's backend is unknown to the control plane at the end.
    ConnectLost { key: String, backend_id: String, at: At },
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Violation::TwoOwners { key, first, second, from } => {
                write!(f, "key {key} had two live backends from {from:?}: {first} and {second}")
            }
            Violation::TokenNotGrowing { key, earlier, later } => write!(
                f,
                "key {key}: {} (token {}) followed {} (token {}) with a token that did not grow",
                later.0, later.1, earlier.0, earlier.1
            ),
            Violation::ConnectTokenShrank { key, earlier, later, at } => write!(
                f,
                "key {key}: a Connect sent at {at:?} got {} (token {}) after one had answered {} (token {})",
                later.0, later.1, earlier.0, earlier.1
            ),
            Violation::ConnectTokenMismatch { backend_id, answered, reported } => {
                write!(f, "{backend_id}: Connect answered token {answered}, the backend reports {reported}")
            }
            Violation::ConnectKeyMismatch { key, backend_id, reported } => {
                write!(f, "a Connect for {key} answered {backend_id}, which reports serving {reported}")
            }
            Violation::WatchMissed { watcher, revision } => write!(f, "watcher {watcher} missed revision {revision}"),
            Violation::WatchRepeated { watcher, revision } => {
                write!(f, "watcher {watcher} received revision {revision} more than once")
            }
            Violation::WatchOutOfOrder { watcher, revision, after } => {
                write!(f, "watcher {watcher} received revision {revision} after {after}")
            }
            Violation::WatchUnknown { watcher, revision } => {
                write!(f, "watcher {watcher} received revision {revision}, which the store's log does not have")
            }
            Violation::NotTerminated { backend_id, state, reason } => {
                write!(f, "{backend_id} ended {state} (reason {reason:?}), not TERMINATED with a reason")
            }
            Violation::ConnectLost { key, backend_id, at } => {
                write!(f, "a Connect for {key} answered {backend_id} at {at:?}, and the control plane does not know it")
            }
        }
    }
}

/// The outcome of [`History::check`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub violations: Vec<Violation>,
}

impl Report {
    pub fn is_ok(&self) -> bool {
        self.violations.is_empty()
    }

    /// Panics listing every violation, if there is one.
    #[track_caller]
    pub fn assert_ok(&self) {
        assert!(self.is_ok(), "the history has {} violation(s):\n{self}", self.violations.len());
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.violations.is_empty() {
            return write!(f, "no violation");
        }
        for violation in &self.violations {
            writeln!(f, "- {violation}")?;
        }
        Ok(())
    }
}

impl History {
    /// Every violation in the history, in the order of the checks listed in the module's
    /// documentation.
    pub fn check(&self) -> Report {
        let mut violations = Vec::new();
        self.check_owners(&mut violations);
        self.check_connect_tokens(&mut violations);
        self.check_watchers(&mut violations);
        self.check_finals(&mut violations);
        Report { violations }
    }

    /// Per key, in order of start: no two backends overlap, and tokens grow.
    fn check_owners(&self, violations: &mut Vec<Violation>) {
        let mut by_key: BTreeMap<&str, Vec<&BackendLife>> = BTreeMap::new();
        for life in &self.lives {
            by_key.entry(&life.key).or_default().push(life);
        }
        for (key, mut lives) in by_key {
            lives.sort_by_key(|life| (life.started, life.fencing_token));
            for (i, later) in lives.iter().enumerate() {
                for earlier in &lives[..i] {
                    if earlier.backend_id != later.backend_id && earlier.overlaps(later) {
                        violations.push(Violation::TwoOwners {
                            key: key.into(),
                            first: earlier.backend_id.clone(),
                            second: later.backend_id.clone(),
                            from: later.started,
                        });
                    }
                }
                if i > 0 {
                    let earlier = lives[i - 1];
                    if earlier.backend_id != later.backend_id && later.fencing_token <= earlier.fencing_token {
                        violations.push(Violation::TokenNotGrowing {
                            key: key.into(),
                            earlier: (earlier.backend_id.clone(), earlier.fencing_token),
                            later: (later.backend_id.clone(), later.fencing_token),
                        });
                    }
                }
            }
        }
    }

    /// Acknowledged Connects: tokens in real-time order, tokens as the backends report them,
    /// and backends the control plane still knows.
    fn check_connect_tokens(&self, violations: &mut Vec<Violation>) {
        let reported: HashMap<&str, &BackendLife> =
            self.lives.iter().map(|life| (life.backend_id.as_str(), life)).collect();
        let known: BTreeSet<&str> = self.finals.iter().map(|f| f.backend_id.as_str()).collect();
        let mut acknowledged: BTreeMap<&str, Vec<(&ConnectCall, &str, u64)>> = BTreeMap::new();
        for call in &self.connects {
            let ConnectOutcome::Ok { backend_id, fencing_token } = &call.outcome else { continue };
            acknowledged.entry(&call.key).or_default().push((call, backend_id, *fencing_token));
            if let Some(life) = reported.get(backend_id.as_str()) {
                if life.fencing_token != *fencing_token {
                    violations.push(Violation::ConnectTokenMismatch {
                        backend_id: backend_id.clone(),
                        answered: *fencing_token,
                        reported: life.fencing_token,
                    });
                }
                if life.key != call.key {
                    violations.push(Violation::ConnectKeyMismatch {
                        key: call.key.clone(),
                        backend_id: backend_id.clone(),
                        reported: life.key.clone(),
                    });
                }
            }
            if !known.contains(backend_id.as_str()) {
                violations.push(Violation::ConnectLost {
                    key: call.key.clone(),
                    backend_id: backend_id.clone(),
                    at: call.completed,
                });
            }
        }
        for (key, calls) in acknowledged {
            // The highest token answered before each call was sent must not be above its own.
            let mut answered: Vec<_> = calls.iter().map(|(call, id, token)| (call.completed, *id, *token)).collect();
            answered.sort_unstable();
            for (call, id, token) in &calls {
                let before = answered.iter().take_while(|(completed, _, _)| *completed < call.invoked);
                if let Some((_, earlier_id, earlier_token)) = before.max_by_key(|(_, _, token)| *token)
                    && earlier_token > token
                {
                    violations.push(Violation::ConnectTokenShrank {
                        key: key.into(),
                        earlier: (earlier_id.to_string(), *earlier_token),
                        later: (id.to_string(), *token),
                        at: call.invoked,
                    });
                }
            }
        }
    }

    /// Each watcher against the store's log over (from, until].
    fn check_watchers(&self, violations: &mut Vec<Violation>) {
        let log: BTreeSet<u64> = self.store_revisions.iter().copied().collect();
        for log_of in &self.watchers {
            let watcher = || log_of.watcher.clone();
            let expected: BTreeSet<u64> = log.range(log_of.from + 1..=log_of.until).copied().collect();
            let mut seen = BTreeSet::new();
            let mut highest: Option<u64> = None;
            for &revision in &log_of.received {
                if !seen.insert(revision) {
                    violations.push(Violation::WatchRepeated { watcher: watcher(), revision });
                    continue;
                }
                if !expected.contains(&revision) {
                    violations.push(Violation::WatchUnknown { watcher: watcher(), revision });
                }
                match highest {
                    Some(after) if revision < after => {
                        violations.push(Violation::WatchOutOfOrder { watcher: watcher(), revision, after })
                    }
                    _ => highest = Some(revision),
                }
            }
            for &revision in expected.difference(&seen) {
                violations.push(Violation::WatchMissed { watcher: watcher(), revision });
            }
        }
    }

    /// Every backend the history names ends TERMINATED with a reason.
    fn check_finals(&self, violations: &mut Vec<Violation>) {
        for end in &self.finals {
            if end.state != "TERMINATED" || end.reason.as_deref().is_none_or(str::is_empty) {
                violations.push(Violation::NotTerminated {
                    backend_id: end.backend_id.clone(),
                    state: end.state.clone(),
                    reason: end.reason.clone(),
                });
            }
        }
        let known: BTreeSet<&str> = self.finals.iter().map(|f| f.backend_id.as_str()).collect();
        let mut unaccounted: BTreeSet<&str> = BTreeSet::new();
        for life in &self.lives {
            if !known.contains(life.backend_id.as_str()) {
                unaccounted.insert(&life.backend_id);
            }
        }
        for backend_id in unaccounted {
            violations.push(Violation::NotTerminated {
                backend_id: backend_id.into(),
                state: "unknown to the control plane".into(),
                reason: None,
            });
        }
    }
}

/// Records a history from many tasks at once, timing everything against one start.
#[derive(Debug)]
pub struct Recorder {
    start: Instant,
    history: Mutex<History>,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder { start: Instant::now(), history: Mutex::new(History::default()) }
    }
}

impl Recorder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Now, as an offset from the start of the recording.
    pub fn now(&self) -> At {
        self.start.elapsed()
    }

    /// `instant` as an offset from the start of the recording (zero if before it).
    pub fn at(&self, instant: Instant) -> At {
        instant.saturating_duration_since(self.start)
    }

    /// Runs one Connect for `key`, recording when it was sent, answered and what it answered.
    pub async fn connect<F, E>(&self, key: &str, call: F) -> Result<(String, u64), E>
    where
        F: Future<Output = Result<(String, u64), E>>,
        E: fmt::Display,
    {
        let invoked = self.now();
        let result = call.await;
        let outcome = match &result {
            Ok((backend_id, fencing_token)) => {
                ConnectOutcome::Ok { backend_id: backend_id.clone(), fencing_token: *fencing_token }
            }
            Err(err) => ConnectOutcome::Failed(err.to_string()),
        };
        let call = ConnectCall { key: key.into(), invoked, completed: self.now(), outcome };
        self.history.lock().unwrap().connects.push(call);
        result
    }

    /// Changes the history under its lock (a backend's life, a watcher's log, the finals).
    pub fn record(&self, change: impl FnOnce(&mut History)) {
        change(&mut self.history.lock().unwrap());
    }

    /// The history so far.
    pub fn history(&self) -> History {
        self.history.lock().unwrap().clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(secs: u64) -> At {
        Duration::from_secs(secs)
    }

    fn ok(key: &str, invoked: u64, completed: u64, backend_id: &str, token: u64) -> ConnectCall {
        ConnectCall {
            key: key.into(),
            invoked: s(invoked),
            completed: s(completed),
            outcome: ConnectOutcome::Ok { backend_id: backend_id.into(), fencing_token: token },
        }
    }

    /// Two backends of one key handing over at t=5, a second key, two watchers (one resumed
    /// across a controller), a failed Connect: everything as it must be.
    fn good() -> History {
        History {
            connects: vec![
                ok("doc", 0, 1, "bk-1", 1),
                ok("doc", 2, 3, "bk-1", 1),
                ConnectCall {
                    key: "doc".into(),
                    invoked: s(4),
                    completed: s(5),
                    outcome: ConnectOutcome::Failed("UNAVAILABLE".into()),
                },
                ok("doc", 5, 6, "bk-2", 2),
                ok("other", 1, 2, "bk-3", 1),
            ],
            lives: vec![
                BackendLife::new("bk-1", "doc", 1, s(1), Some(s(5))),
                BackendLife::new("bk-2", "doc", 2, s(5), Some(s(9))),
                BackendLife::new("bk-3", "other", 1, s(2), Some(s(4))),
            ],
            watchers: vec![
                WatcherLog { watcher: "on-a".into(), from: 0, until: 6, received: vec![1, 2, 3, 4, 5, 6] },
                WatcherLog { watcher: "resumed".into(), from: 2, until: 6, received: vec![3, 4, 5, 6] },
            ],
            store_revisions: (1..=6).collect(),
            finals: vec![
                Final::terminated("bk-1", "KEY_EXPIRED"),
                Final::terminated("bk-2", "EXTERNAL"),
                Final::terminated("bk-3", "IDLE"),
            ],
        }
    }

    #[test]
    fn a_good_history_passes() {
        let report = good().check();
        assert!(report.is_ok(), "{report}");
        report.assert_ok();
        assert_eq!(report.to_string(), "no violation");
    }

    #[test]
    fn two_overlapping_owners_of_a_key_are_found() {
        let mut history = good();
        history.lives[1].started = s(4);
        assert_eq!(
            history.check().violations,
            [Violation::TwoOwners { key: "doc".into(), first: "bk-1".into(), second: "bk-2".into(), from: s(4) }]
        );
        // A backend still serving at the end overlaps every later one.
        let mut history = good();
        history.lives[0].ended = None;
        assert!(matches!(history.check().violations[..], [Violation::TwoOwners { .. }]), "{}", history.check());
    }

    #[test]
    fn a_shrinking_or_repeated_fencing_token_is_found() {
        let mut history = good();
        history.lives[1].fencing_token = 1;
        history.connects[3].outcome = ConnectOutcome::Ok { backend_id: "bk-2".into(), fencing_token: 1 };
        let violations = history.check().violations;
        assert!(violations.contains(&Violation::TokenNotGrowing {
            key: "doc".into(),
            earlier: ("bk-1".into(), 1),
            later: ("bk-2".into(), 1),
        }));

        // A Connect sent after another was answered gets an older token: found even without
        // the backends' reports.
        let mut history = good();
        history.connects.push(ok("doc", 7, 8, "bk-1", 1));
        history.lives.clear();
        let violations = history.check().violations;
        assert_eq!(
            violations,
            [Violation::ConnectTokenShrank {
                key: "doc".into(),
                earlier: ("bk-2".into(), 2),
                later: ("bk-1".into(), 1),
                at: s(7),
            }]
        );
    }

    #[test]
    fn a_connect_answering_another_token_than_the_backend_reports_is_found() {
        let mut history = good();
        history.connects[0].outcome = ConnectOutcome::Ok { backend_id: "bk-1".into(), fencing_token: 7 };
        assert!(history.check().violations.contains(&Violation::ConnectTokenMismatch {
            backend_id: "bk-1".into(),
            answered: 7,
            reported: 1,
        }));
    }

    #[test]
    fn a_skipped_repeated_or_reordered_revision_is_found() {
        let mut history = good();
        history.watchers[1].received = vec![3, 5, 6];
        assert_eq!(history.check().violations, [Violation::WatchMissed { watcher: "resumed".into(), revision: 4 }]);

        history.watchers[1].received = vec![3, 4, 4, 5, 6];
        assert_eq!(history.check().violations, [Violation::WatchRepeated { watcher: "resumed".into(), revision: 4 }]);

        history.watchers[1].received = vec![3, 5, 4, 6];
        assert_eq!(
            history.check().violations,
            [Violation::WatchOutOfOrder { watcher: "resumed".into(), revision: 4, after: 5 }]
        );

        // A resume that restarts before where it left off delivers a revision twice.
        history.watchers[1].received = vec![3, 4, 3, 4, 5, 6];
        assert_eq!(history.check().violations.len(), 2, "{}", history.check());

        history.watchers[1].received = vec![3, 4, 5, 6, 7];
        assert_eq!(history.check().violations, [Violation::WatchUnknown { watcher: "resumed".into(), revision: 7 }]);
    }

    #[test]
    fn a_connect_answering_a_backend_of_another_key_is_found() {
        let mut history = good();
        history.connects[4].outcome = ConnectOutcome::Ok { backend_id: "bk-2".into(), fencing_token: 2 };
        assert!(history.check().violations.contains(&Violation::ConnectKeyMismatch {
            key: "other".into(),
            backend_id: "bk-2".into(),
            reported: "doc".into(),
        }));
    }

    #[test]
    fn a_backend_not_terminated_with_a_reason_is_found() {
        let mut history = good();
        history.finals[0] = Final { backend_id: "bk-1".into(), state: "READY".into(), reason: None };
        history.finals[1].reason = Some(String::new());
        let violations = history.check().violations;
        assert_eq!(violations.len(), 2, "{}", history.check());
        assert!(violations.iter().all(|v| matches!(v, Violation::NotTerminated { .. })));

        // A backend that reported serving but that the control plane does not know.
        let mut history = good();
        history.finals.retain(|f| f.backend_id != "bk-3");
        let violations = history.check().violations;
        assert!(
            violations.iter().any(|v| matches!(v, Violation::NotTerminated { backend_id, .. } if backend_id == "bk-3"))
        );
    }

    #[test]
    fn an_acknowledged_connect_the_control_plane_forgot_is_found() {
        let mut history = good();
        history.finals.retain(|f| f.backend_id != "bk-2");
        history.lives.retain(|l| l.backend_id != "bk-2");
        assert_eq!(
            history.check().violations,
            [Violation::ConnectLost { key: "doc".into(), backend_id: "bk-2".into(), at: s(6) }]
        );
    }

    #[test]
    fn a_report_names_every_violation_and_assert_ok_fails_on_one() {
        let mut history = good();
        history.lives[1].started = s(4);
        history.watchers[0].received.remove(2);
        let report = history.check();
        let text = report.to_string();
        assert!(text.contains("key doc had two live backends from 4s: bk-1 and bk-2"), "{text}");
        assert!(text.contains("watcher on-a missed revision 3"), "{text}");
        let failed = std::panic::catch_unwind(|| report.assert_ok());
        assert!(failed.is_err(), "assert_ok fails on a violation");
    }

    #[tokio::test]
    async fn the_recorder_times_connects_against_one_start() {
        let recorder = Recorder::new();
        let answered: Result<_, String> =
            recorder.connect("doc", async { Ok::<_, String>(("bk-1".to_string(), 1)) }).await;
        assert_eq!(answered.unwrap(), ("bk-1".to_string(), 1));
        let failed = recorder.connect("doc", async { Err::<(String, u64), _>("UNAVAILABLE".to_string()) }).await;
        assert!(failed.is_err());
        recorder.record(|h| h.finals.push(Final::terminated("bk-1", "EXTERNAL")));
        let history = recorder.history();
        assert_eq!(history.connects.len(), 2);
        assert!(history.connects[0].invoked <= history.connects[0].completed);
        assert_eq!(history.connects[1].outcome, ConnectOutcome::Failed("UNAVAILABLE".into()));
        history.check().assert_ok();
    }
}
