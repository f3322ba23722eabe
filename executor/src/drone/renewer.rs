//! The drone's key renewals, batched (docs/design/backends-and-leases.md#key-leases-and-fencing):
//! every third of the lease, one `RenewKeys` message per [`MAX_BATCH`] live keys instead of one
//! message per key, and each answer handed to its backend's task as the send time of the batch
//! that carried it.
//!
//! Backend tasks register their key ([`KeyRenewer::hold`]) and keep their own deadlines
//! ([`super::lease::KeyLease`]); this only sends and matches answers. Renewals go out on the
//! attach stream's priority lane ([`super::outbox::CurrentStream::send_priority`]), ahead of
//! backend events, and their answers are read apart from actions (`attach.rs`), so a burst of
//! spawns cannot delay them.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Utc};
use hangar::v1;
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::backend::{Command, RenewalAnswer};
use super::lease::Confirmation;
use super::outbox::CurrentStream;

/// Keys per `RenewKeys` message (and per store transaction on the controller): ~100 KB on the
/// wire, a transaction short enough not to hold the store's writer for long.
pub const MAX_BATCH: usize = 1_000;

/// How soon to try again when a batch could not even be sent (no controller attached).
const RETRY_UNSENT: Duration = Duration::from_millis(250);

/// New keys that cannot wait for the next round ([`renew_at_once`]) are renewed this soon after
/// they arrive, gathered into one batch.
pub const FRESH_DELAY: Duration = Duration::from_millis(200);

/// Whether a key that just arrived, whose backend is to be soft-terminated at `soft_deadline`
/// unless a renewal is confirmed first, must be renewed at once rather than with the next round
/// (`next_round`, `None` when none is planned): when that round would leave it less than a sixth
/// of its `lease` before its deadline. A key the last round renewed has exactly that sixth (its
/// deadline is half a lease after that round's send, the next round a third after it), so a key
/// that waits for the round is never closer to its deadline than every other key is. Keys whose
/// Spawn came in time (the lease it carried started after the last round) wait for the round:
/// under a stream of placements that is most of them, and each renewed at once was one more key
/// encoded, sent and written by the controller within 200 ms of its Connect. A key whose Spawn
/// spent part of its lease on the way, or was held back for a renewal, goes at once as before
/// (docs/design/backends-and-leases.md#a-spawn-that-arrives-late-in-its-lease).
pub fn renew_at_once(soft_deadline: Instant, lease: Duration, next_round: Option<Instant>) -> bool {
    next_round.is_none_or(|round| soft_deadline < round + lease / 6)
}

struct Held {
    key: v1::BackendKey,
    fencing_token: u64,
    lease: Duration,
    task: mpsc::Sender<Command>,
    /// Not renewed since it arrived.
    fresh: bool,
    /// Half its lease after the confirmation it arrived with: when its backend is soft-terminated
    /// unless a renewal is confirmed first.
    soft_deadline: Instant,
    /// Its last answer was a deferral: its deadlines have moved by the grace.
    deferred: bool,
}

/// A batch sent and not yet answered. The controller answers on the same stream in order;
/// answers from a dead stream never come.
struct InFlight {
    generation: u64,
    sent: Instant,
    /// What the controller of this stream promised with a deferral.
    outage_grace: Duration,
    backend_ids: Vec<String>,
    /// Answers received so far (single `RenewKeyResponse`s from an older controller arrive one by
    /// one).
    answered: usize,
}

#[derive(Default)]
pub struct KeyRenewer {
    held: Mutex<HashMap<String, Held>>,
    in_flight: Mutex<VecDeque<InFlight>>,
    /// A key was added.
    added: Notify,
    /// A new stream is up while batches sent on an older one were never answered.
    restream: Notify,
    /// The stream (generation) whose controller last answered a renewal deferred: it cannot
    /// reach its store.
    deferred_on: Mutex<Option<u64>>,
}

/// How long a batch may go unanswered before its stream is given up as stuck: a tenth of the
/// lease (3 s of 30 s), at least 1 s. A controller that cannot reach its store answers deferred
/// well within this (it waits for the store a fifteenth of the lease); one that does not answer at
/// all is paused or cut off, and waiting for the HTTP/2 keep-alive to find that out (10–15 s) would
/// run past the soft deadline (half the lease after the last confirmed batch, which the next
/// batch follows by a third of it).
pub fn answer_timeout(lease: Duration) -> Duration {
    (lease / 10).max(Duration::from_secs(1))
}

impl KeyRenewer {
    /// `backend_id` holds `key` with `fencing_token` for leases of `lease`, last `confirmed` as its
    /// Spawn or journal said; its task gets every answer as [`Command::Renewal`]. Held until the
    /// task ends.
    pub fn hold(
        &self,
        backend_id: &str,
        key: v1::BackendKey,
        fencing_token: u64,
        lease: Duration,
        confirmed: Confirmation,
        task: mpsc::Sender<Command>,
    ) {
        let soft_deadline = confirmed.after(lease / 2);
        let held = Held { key, fencing_token, lease, task, fresh: true, soft_deadline, deferred: false };
        self.held.lock().unwrap().insert(backend_id.to_string(), held);
        self.added.notify_one();
    }

    /// Keys held by live tasks (ended ones are forgotten here), all or only the fresh ones that
    /// cannot wait for the round planned at `next_round` ([`renew_at_once`]), and the shortest
    /// lease among all.
    fn live(&self, only_fresh: bool, next_round: Option<Instant>) -> (Vec<v1::RenewKey>, Option<Duration>) {
        let mut held = self.held.lock().unwrap();
        held.retain(|_, h| !h.task.is_closed());
        let lease = held.values().map(|h| h.lease).min();
        // While the controller answers deferred (it cannot reach its store), a new key goes out
        // at once all the same: it gets its grace now, and the drone can tell sooner that every
        // key it holds has had one (`every_key_deferred_on`).
        let deferring = only_fresh && held.values().any(|h| h.deferred);
        let keys = held
            .iter_mut()
            .filter(|(_, h)| {
                !only_fresh || (h.fresh && (deferring || renew_at_once(h.soft_deadline, h.lease, next_round)))
            })
            .map(|(id, h)| {
                h.fresh = false;
                v1::RenewKey { backend_id: id.clone(), key: Some(h.key.clone()), fencing_token: h.fencing_token }
            })
            .collect();
        (keys, lease)
    }

    /// Renews every held key every third of the lease, and new keys as they arrive, until
    /// shutdown.
    pub async fn run(&self, stream: &CurrentStream, shutdown: CancellationToken) {
        let mut next: Option<Instant> = None;
        loop {
            let round = async {
                match next {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            let only_fresh = tokio::select! {
                _ = round => false,
                // What an earlier stream took with it goes out on the new one now, not at the
                // next round: its deadlines kept running.
                _ = self.restream.notified() => false,
                _ = self.added.notified() => {
                    // Gather the keys of a burst of spawns into one batch.
                    tokio::time::sleep(FRESH_DELAY).await;
                    true
                }
                _ = shutdown.cancelled() => return,
            };
            let (keys, lease) = self.live(only_fresh, next);
            let Some(lease) = lease else {
                next = None;
                continue;
            };
            if keys.is_empty() {
                next = next.or(Some(Instant::now() + lease / 3));
                continue;
            }
            let sent = self.send(stream, keys).await;
            let again = Instant::now() + if sent { lease / 3 } else { RETRY_UNSENT.min(lease / 10) };
            // A round plans the next one. New keys only bring it forward: a key with a shorter
            // lease than the others shortens the rounds from now on, and new keys that could not
            // be sent go out with a round soon.
            next = Some(match next {
                Some(planned) if only_fresh => planned.min(again),
                _ => again,
            });
        }
    }

    /// Sends every key, in batches; whether they all went out.
    async fn send(&self, stream: &CurrentStream, keys: Vec<v1::RenewKey>) -> bool {
        use v1::drone_attach_request::Message;
        let Some(lane) = stream.priority() else { return false };
        for chunk in keys.chunks(MAX_BATCH) {
            let sent = Instant::now();
            let backend_ids = chunk.iter().map(|k| k.backend_id.clone()).collect();
            // Recorded before the send: the answer may come back before `send` returns.
            self.in_flight.lock().unwrap().push_back(InFlight {
                generation: lane.generation,
                sent,
                outage_grace: lane.outage_grace,
                backend_ids,
                answered: 0,
            });
            let delivered = if lane.batch_renewals {
                lane.send(Message::RenewKeys(v1::RenewKeys { keys: chunk.to_vec() })).await
            } else {
                // An older controller: one message per key, answered one by one, in order.
                let mut delivered = true;
                for key in chunk {
                    delivered = delivered && lane.send(Message::RenewKey(key.clone())).await;
                }
                delivered
            };
            if !delivered {
                // Not sent (or not all of it, to an older controller): no answer will come for it,
                // and answers are matched to batches in order.
                self.in_flight.lock().unwrap().pop_back();
                return false;
            }
        }
        true
    }

    /// A new stream is up: if batches sent on earlier ones were never answered, every key is
    /// renewed on it at once.
    pub fn stream_changed(&self, generation: u64) {
        if self.in_flight.lock().unwrap().iter().any(|b| b.generation < generation) {
            self.restream.notify_one();
        }
    }

    /// How long the oldest batch sent on stream `generation` has gone unanswered past the answer
    /// timeout ([`answer_timeout`] of the shortest lease), if it has.
    pub fn overdue(&self, generation: u64) -> Option<Duration> {
        let lease = self.held.lock().unwrap().values().map(|h| h.lease).min()?;
        let timeout = answer_timeout(lease);
        let in_flight = self.in_flight.lock().unwrap();
        let oldest = in_flight.iter().find(|b| b.generation == generation)?;
        (oldest.sent.elapsed() > timeout).then_some(timeout)
    }

    /// Whether the drone holds no live key (so no renewal will be deferred to tell it that its
    /// controller lost the store).
    pub fn holds_none(&self) -> bool {
        self.held.lock().unwrap().values().all(|h| h.task.is_closed())
    }

    /// Whether the controller of stream `generation` answered renewals deferred (it cannot reach
    /// its store, and another controller that can would confirm the keys instead), and every key
    /// held has had its deferral, so that its deadlines have moved by the grace. Only then may
    /// the drone leave: a controller that seemed to reach the store may turn out not to (its
    /// health lags the store by a few seconds), and a key not yet deferred would then get no
    /// grace from anyone.
    pub fn every_key_deferred_on(&self, generation: u64) -> bool {
        *self.deferred_on.lock().unwrap() == Some(generation)
            && self.held.lock().unwrap().values().filter(|h| !h.task.is_closed()).all(|h| h.deferred)
    }

    /// The answer to the oldest outstanding batch of stream `generation`. Returns the keys it
    /// renewed and the wall-clock send time of their batch, for the journal.
    pub fn batch_answered(&self, generation: u64, answer: v1::RenewKeysResponse) -> Confirmed {
        if answer.keys.iter().any(|k| k.deferred) {
            *self.deferred_on.lock().unwrap() = Some(generation);
        }
        let Some(batch) = self.oldest(generation) else {
            self.unmatched(answer.keys);
            return Confirmed::default();
        };
        let mut confirmed = Confirmed { backend_ids: Vec::new(), sent_at: wall_time(batch.sent) };
        let mut answers = answer.keys.into_iter();
        for (backend_id, answer) in batch.backend_ids.iter().zip(answers.by_ref()) {
            if *backend_id != answer.backend_id {
                tracing::warn!(expected = %backend_id, got = %answer.backend_id, "renewal answers out of order; ignoring one");
                continue;
            }
            self.dispatch(backend_id, batch.sent, RenewalAnswer::of(&answer, batch.outage_grace));
            if let Some(held) = self.held.lock().unwrap().get_mut(backend_id) {
                held.deferred = answer.deferred && !answer.renewed;
            }
            if answer.renewed {
                confirmed.backend_ids.push(answer.backend_id);
            }
        }
        self.unmatched(answers.collect());
        confirmed
    }

    /// The answer to one key of the oldest outstanding batch (an older controller's).
    pub fn key_answered(&self, generation: u64, answer: v1::RenewKeyResponse) -> Confirmed {
        let mut in_flight = self.in_flight.lock().unwrap();
        in_flight.retain(|b| b.generation >= generation);
        let matched = match in_flight.front_mut() {
            Some(batch) if batch.generation == generation => {
                let position = batch.answered;
                batch.answered += 1;
                let sent = batch.sent;
                let matched = (batch.backend_ids.get(position) == Some(&answer.backend_id)).then_some(sent);
                if batch.answered >= batch.backend_ids.len() {
                    in_flight.pop_front();
                }
                matched
            }
            _ => None,
        };
        drop(in_flight);
        match matched {
            Some(sent) => {
                // An older controller's single answers: it never defers.
                self.dispatch(&answer.backend_id, sent, RenewalAnswer::of(&answer, Duration::ZERO));
                let backend_ids = if answer.renewed { vec![answer.backend_id] } else { Vec::new() };
                Confirmed { backend_ids, sent_at: wall_time(sent) }
            }
            None => {
                self.unmatched(vec![answer]);
                Confirmed::default()
            }
        }
    }

    fn oldest(&self, generation: u64) -> Option<InFlight> {
        let mut in_flight = self.in_flight.lock().unwrap();
        // Batches sent on earlier streams will never be answered.
        in_flight.retain(|b| b.generation >= generation);
        match in_flight.front() {
            Some(b) if b.generation == generation => in_flight.pop_front(),
            _ => None,
        }
    }

    /// Answers matched to no batch confirm nothing, nor does a deferral count without its batch;
    /// a refusal still counts: the key is lost.
    fn unmatched(&self, answers: Vec<v1::RenewKeyResponse>) {
        for answer in answers.into_iter().filter(|a| !a.renewed && !a.deferred) {
            self.dispatch(&answer.backend_id, Instant::now(), RenewalAnswer::Refused);
        }
    }

    fn dispatch(&self, backend_id: &str, sent: Instant, answer: RenewalAnswer) {
        let task = self.held.lock().unwrap().get(backend_id).map(|h| h.task.clone());
        if let Some(task) = task {
            // The task's queue is small; a full one is a task busy terminating, or a renewal it
            // will have confirmed again a third of a lease later.
            let _ = task.try_send(Command::Renewal { sent, answer });
        }
    }
}

impl RenewalAnswer {
    /// One key's answer, from a controller that promised `outage_grace` with a deferral. A
    /// deferral without a promise (a controller that should not have sent one) confirms nothing
    /// and refuses nothing: it is a grace of zero.
    fn of(answer: &v1::RenewKeyResponse, outage_grace: Duration) -> RenewalAnswer {
        match (answer.renewed, answer.deferred) {
            (true, _) => RenewalAnswer::Renewed,
            (false, true) => RenewalAnswer::Deferred { grace: outage_grace },
            (false, false) => RenewalAnswer::Refused,
        }
    }
}

/// Keys an answer renewed, and the wall-clock send time of their batch.
#[derive(Debug, Default)]
pub struct Confirmed {
    pub backend_ids: Vec<String>,
    pub sent_at: DateTime<Utc>,
}

/// The wall-clock time of a past monotonic instant.
fn wall_time(at: Instant) -> DateTime<Utc> {
    Utc::now() - chrono::Duration::from_std(at.elapsed()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> v1::BackendKey {
        v1::BackendKey { namespace: "docs".into(), name: name.into(), tag: String::new() }
    }

    fn answer(backend_id: &str, renewed: bool) -> v1::RenewKeyResponse {
        v1::RenewKeyResponse { backend_id: backend_id.into(), renewed, expires_at: None, deferred: false }
    }

    #[tokio::test]
    async fn a_batch_unanswered_past_a_tenth_of_the_lease_marks_its_stream_stuck() {
        let renewer = KeyRenewer::default();
        let (tx, _rx) = mpsc::channel(4);
        renewer.hold("bk-a", key("a"), 1, Duration::from_secs(30), Confirmation::at(Instant::now()), tx);
        let sent_ago = |ago: Duration| {
            let mut in_flight = renewer.in_flight.lock().unwrap();
            in_flight.clear();
            in_flight.push_back(InFlight {
                generation: 1,
                sent: Instant::now() - ago,
                outage_grace: Duration::ZERO,
                backend_ids: vec!["bk-a".into()],
                answered: 0,
            });
        };
        sent_ago(Duration::from_millis(2_800));
        assert_eq!(renewer.overdue(1), None);
        sent_ago(Duration::from_millis(3_100));
        assert_eq!(renewer.overdue(1), Some(Duration::from_secs(3)));
        assert_eq!(renewer.overdue(2), None, "another stream has nothing outstanding");
        // The next stream renews at once what the stuck one never answered.
        renewer.stream_changed(2);
        tokio::time::timeout(Duration::from_millis(100), renewer.restream.notified()).await.expect("renew now");
    }

    #[tokio::test]
    async fn each_key_of_a_batch_gets_its_own_answer_with_the_batch_send_time() {
        let renewer = KeyRenewer::default();
        let (a_tx, mut a_rx) = mpsc::channel(4);
        let (b_tx, mut b_rx) = mpsc::channel(4);
        let now = Confirmation::at(Instant::now());
        renewer.hold("bk-a", key("a"), 1, Duration::from_secs(3), now, a_tx);
        renewer.hold("bk-b", key("b"), 1, Duration::from_secs(3), now, b_tx);
        let sent = Instant::now();
        renewer.in_flight.lock().unwrap().push_back(InFlight {
            generation: 2,
            sent,
            outage_grace: Duration::ZERO,
            backend_ids: vec!["bk-a".into(), "bk-b".into()],
            answered: 0,
        });
        // An answer from a dead stream confirms nothing.
        renewer.batch_answered(1, v1::RenewKeysResponse { keys: vec![answer("bk-a", true)] });
        assert!(a_rx.try_recv().is_err());
        let confirmed = renewer
            .batch_answered(2, v1::RenewKeysResponse { keys: vec![answer("bk-a", true), answer("bk-b", false)] });
        assert_eq!(confirmed.backend_ids, ["bk-a"], "only renewed keys are journaled as renewed");
        match a_rx.try_recv().unwrap() {
            Command::Renewal { sent: at, answer: RenewalAnswer::Renewed } => assert_eq!(at, sent),
            other => panic!("{other:?}"),
        }
        assert!(matches!(b_rx.try_recv().unwrap(), Command::Renewal { answer: RenewalAnswer::Refused, .. }));
        // The batch is answered: a repeat confirms nothing, a refusal still counts.
        renewer.batch_answered(2, v1::RenewKeysResponse { keys: vec![answer("bk-a", true), answer("bk-b", false)] });
        assert!(a_rx.try_recv().is_err());
        assert!(matches!(b_rx.try_recv().unwrap(), Command::Renewal { answer: RenewalAnswer::Refused, .. }));
    }

    fn ids(keys: &[v1::RenewKey]) -> Vec<&str> {
        let mut ids: Vec<&str> = keys.iter().map(|k| k.backend_id.as_str()).collect();
        ids.sort();
        ids
    }

    #[tokio::test]
    async fn a_key_whose_spawn_came_in_time_waits_for_the_round_and_a_late_one_goes_at_once() {
        let renewer = KeyRenewer::default();
        let lease = Duration::from_secs(30);
        let now = Instant::now();
        let (tx, _rx) = mpsc::channel(8);
        // The round was sent 4 s ago; the next one is 6 s away.
        let next_round = Some(now + Duration::from_secs(6));
        // Its lease started now (a Spawn in time): deadline in 15 s, 9 s after the round, more
        // than the 5 s (a sixth of the lease) a key the last round renewed has.
        renewer.hold("bk-in-time", key("a"), 1, lease, Confirmation::at(now), tx.clone());
        // Its lease started 5 s before the last round: deadline in 6 s, at the round itself.
        renewer.hold("bk-late", key("b"), 1, lease, Confirmation::ago(Duration::from_secs(9), now), tx.clone());
        // Its lease started just after the last round: 5 s and a bit after the round. Waits.
        let just_after = Confirmation::ago(Duration::from_millis(3_900), now);
        renewer.hold("bk-after-round", key("c"), 1, lease, just_after, tx.clone());
        // Just before it: less than a sixth left after the round. Goes at once.
        let just_before = Confirmation::ago(Duration::from_millis(4_100), now);
        renewer.hold("bk-before-round", key("d"), 1, lease, just_before, tx.clone());

        let (keys, shortest) = renewer.live(true, next_round);
        assert_eq!(shortest, Some(lease));
        assert_eq!(ids(&keys), ["bk-before-round", "bk-late"]);
        // Taken once: the next batch of new keys does not send them again.
        assert!(renewer.live(true, next_round).0.is_empty(), "the late keys were sent already");
        // With no round planned (the drone's first keys), every new key goes at once.
        renewer.hold("bk-first", key("e"), 1, lease, Confirmation::at(now), tx.clone());
        assert_eq!(ids(&renewer.live(true, None).0), ["bk-after-round", "bk-first", "bk-in-time"]);
        // The round renews every key, fresh or not.
        assert_eq!(renewer.live(false, next_round).0.len(), 5);
    }

    #[tokio::test]
    async fn while_the_controller_defers_renewals_new_keys_go_at_once() {
        let renewer = KeyRenewer::default();
        let lease = Duration::from_secs(30);
        let now = Instant::now();
        let (tx, _rx) = mpsc::channel(8);
        renewer.hold("bk-old", key("a"), 1, lease, Confirmation::at(now), tx.clone());
        renewer.held.lock().unwrap().get_mut("bk-old").unwrap().fresh = false;
        renewer.held.lock().unwrap().get_mut("bk-old").unwrap().deferred = true;
        renewer.hold("bk-new", key("b"), 1, lease, Confirmation::at(now), tx);
        let next_round = Some(now + Duration::from_secs(6));
        assert_eq!(ids(&renewer.live(true, next_round).0), ["bk-new"]);
    }
}
