//! Group commit, the one mechanism under the write batches ([`super::batch`]) and the key
//! renewal groups ([`super::renewals`]): a call joins a queue; whoever holds the queue's leader
//! lock takes *every* call waiting (in a capped queue, below, the oldest up to its cap) and runs
//! them together, and each caller gets its own answer once that run is over. A run that fails
//! is retried call by call, so a call that fails fails alone. A run that has started completes
//! even if its leader's caller stops waiting (the store runs it on its own runtime:
//! `OffloadedStore`); should a leader be dropped all the same, the calls it took are answered as
//! abandoned, never left waiting.
//!
//! A queue may space its runs: each starts no sooner than `spacing` after the one before, and
//! gathers what came meanwhile. A queue whose runs may wait a little (renewals) does fewer,
//! larger ones under load; a lone call after a quiet spell runs at once.
//!
//! A queue may also cap its runs: a run takes the waiting calls oldest first, up to a total
//! weight (at least one call), and leaves the rest for the next. A run holds the store's one
//! write connection, so the cap bounds how long every other write waits behind one: a backlog
//! of renewals runs as several groups with the other writes between them, not as one.

use crate::store::StoreError;
use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::time::Instant;

/// Where a call's answer goes.
type Reply<D> = oneshot::Sender<Result<D, StoreError>>;

/// What runs a group's calls together, answering each in order.
pub(in crate::store::sql) trait Runs<W, D> {
    fn run<'a>(&'a self, calls: &'a [W]) -> impl Future<Output = Result<Vec<D>, StoreError>> + Send + 'a;
}

/// Calls of type `W` waiting for the next run, each answered with a `D`, and the lock the run's
/// leader holds.
pub(in crate::store::sql) struct GroupQueue<W, D> {
    /// What a run is called in messages ("the write's batch").
    what: &'static str,
    waiting: Mutex<Vec<(W, Reply<D>)>>,
    /// The least time from one run's start to the next's.
    spacing: Duration,
    /// A call's weight, and the most a run takes (always at least one call).
    weigh: fn(&W) -> usize,
    max_weight: usize,
    /// The leader's lock, holding when the last run started.
    leader: tokio::sync::Mutex<Option<Instant>>,
}

impl<W, D> GroupQueue<W, D> {
    /// A queue whose runs start as soon as the one before is over.
    pub(in crate::store::sql) fn new(what: &'static str) -> Self {
        GroupQueue::spaced(what, Duration::ZERO)
    }

    /// A queue whose runs start at least `spacing` apart.
    pub(in crate::store::sql) fn spaced(what: &'static str, spacing: Duration) -> Self {
        GroupQueue {
            what,
            waiting: Mutex::new(Vec::new()),
            spacing,
            weigh: |_| 1,
            max_weight: usize::MAX,
            leader: tokio::sync::Mutex::new(None),
        }
    }

    /// The same queue, whose runs take calls of at most `max_weight` in all, each weighed by
    /// `weigh` (a call heavier than that runs alone).
    pub(in crate::store::sql) fn capped(self, max_weight: usize, weigh: fn(&W) -> usize) -> Self {
        GroupQueue { weigh, max_weight, ..self }
    }

    /// The oldest waiting calls, up to the cap, taken off the queue.
    fn take(&self) -> Vec<(W, Reply<D>)> {
        let mut waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        let mut weight = 0usize;
        let count = waiting
            .iter()
            .take_while(|(call, _)| {
                let first = weight == 0;
                weight = weight.saturating_add((self.weigh)(call).max(1));
                first || weight <= self.max_weight
            })
            .count();
        let rest = waiting.split_off(count);
        std::mem::replace(&mut *waiting, rest)
    }

    /// Runs `call` in a run of `runner` (which answers its calls in order) and answers what it
    /// did, once that run is over.
    pub(in crate::store::sql) async fn submit(&self, runner: &impl Runs<W, D>, call: W) -> Result<D, StoreError> {
        let (reply, mut answer) = oneshot::channel();
        self.waiting.lock().unwrap_or_else(|e| e.into_inner()).push((call, reply));
        let mut leader = self.leader.lock().await;
        // A capped run may leave ours for the next: this leader runs the oldest calls until a
        // run has answered its own (every caller after it waits on the lock meanwhile).
        loop {
            match answer.try_recv() {
                // A run took it, ours or a leader's before us.
                Ok(done) => return done,
                // That leader was dropped before its run was over.
                Err(oneshot::error::TryRecvError::Closed) => return Err(self.abandoned()),
                Err(oneshot::error::TryRecvError::Empty) => {}
            }
            if let Some(next) = leader.map(|last| last + self.spacing).filter(|next| *next > Instant::now()) {
                // Calls that come meanwhile join the queue; should this leader stop waiting here,
                // it has taken nothing, and the next leader takes them.
                tokio::time::sleep_until(next).await;
            }
            *leader = Some(Instant::now());
            // Ours is still waiting (only leaders take calls), so this run or a later one of
            // this leader takes it.
            let (calls, replies): (Vec<W>, Vec<_>) = self.take().into_iter().unzip();
            match runner.run(&calls).await {
                Ok(done) => {
                    for (reply, done) in replies.into_iter().zip(done) {
                        let _ = reply.send(Ok(done));
                    }
                }
                Err(err) if calls.len() == 1 => {
                    if let Some(reply) = replies.into_iter().next() {
                        let _ = reply.send(Err(err));
                    }
                }
                Err(err) => {
                    tracing::debug!(error = %err, calls = calls.len(), "{} failed; its calls are retried one by one", self.what);
                    for (call, reply) in calls.iter().zip(replies) {
                        let done = runner.run(std::slice::from_ref(call)).await.map(|mut d| d.remove(0));
                        let _ = reply.send(done);
                    }
                }
            }
        }
    }

    fn abandoned(&self) -> StoreError {
        StoreError::Unavailable(format!("{} was abandoned before it committed", self.what))
    }
}

#[cfg(test)]
mod tests {
    use super::{GroupQueue, Runs};
    use crate::store::StoreError;
    use std::future::Future;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;
    use tokio::time::Instant;

    /// Records each run: when it started and the calls it took.
    #[derive(Default)]
    struct Recorder(Mutex<Vec<(Instant, Vec<u32>)>>);

    impl Runs<u32, u32> for Recorder {
        fn run<'a>(&'a self, calls: &'a [u32]) -> impl Future<Output = Result<Vec<u32>, StoreError>> + Send + 'a {
            self.0.lock().unwrap().push((Instant::now(), calls.to_vec()));
            async move { Ok(calls.to_vec()) }
        }
    }

    /// A spaced queue (renewals) runs a lone call at once, and a run that comes sooner after the
    /// last one's start waits out the spacing and takes every call that came meanwhile.
    #[tokio::test(start_paused = true)]
    async fn a_spaced_queue_runs_a_lone_call_at_once_and_gathers_the_calls_of_its_spacing() {
        let spacing = Duration::from_millis(50);
        let queue = Arc::new(GroupQueue::<u32, u32>::spaced("the test's group", spacing));
        let recorder = Arc::new(Recorder::default());
        let start = Instant::now();
        assert_eq!(queue.submit(&*recorder, 1).await.unwrap(), 1);
        let calls: Vec<_> = (2..=4)
            .map(|call| {
                let (queue, recorder) = (queue.clone(), recorder.clone());
                tokio::spawn(async move { queue.submit(&*recorder, call).await.unwrap() })
            })
            .collect();
        for (call, answer) in (2..=4).zip(calls) {
            assert_eq!(answer.await.unwrap(), call, "each call gets its own answer");
        }
        let runs = recorder.0.lock().unwrap().clone();
        assert_eq!(runs.len(), 2, "one run for the lone call, one for the three after it: {runs:?}");
        assert_eq!(runs[0], (start, vec![1]), "the lone call ran at once");
        assert_eq!(runs[1].1, vec![2, 3, 4]);
        assert_eq!(runs[1].0 - start, spacing, "the second run started a spacing after the first");

        // After a quiet spell longer than the spacing, a call runs at once again.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let quiet = Instant::now();
        queue.submit(&*recorder, 5).await.unwrap();
        assert_eq!(recorder.0.lock().unwrap().last().unwrap(), &(quiet, vec![5]));
    }

    /// A capped queue (renewals) takes the oldest calls up to its cap and leaves the rest for
    /// the next run, a call heavier than the cap runs alone, and a leader whose own call was
    /// left over runs again until it is answered: a backlog drains as several runs.
    #[tokio::test(start_paused = true)]
    async fn a_capped_queue_splits_a_backlog_into_runs_of_at_most_its_cap_oldest_first() {
        let queue = GroupQueue::<u32, u32>::new("the test's group").capped(10, |call| *call as usize);
        let recorder = Recorder::default();
        // A backlog whose callers are not leaders (they left it to whoever leads next).
        let backlog: Vec<_> = [4, 4, 4, 30, 2, 3]
            .into_iter()
            .map(|call| {
                let (reply, answer) = tokio::sync::oneshot::channel();
                queue.waiting.lock().unwrap().push((call, reply));
                (call, answer)
            })
            .collect();
        assert_eq!(queue.submit(&recorder, 5).await.unwrap(), 5, "the leader's own call, last in the queue");
        for (call, answer) in backlog {
            assert_eq!(answer.await.unwrap().unwrap(), call, "each call gets its own answer");
        }
        let runs: Vec<Vec<u32>> = recorder.0.lock().unwrap().iter().map(|(_, calls)| calls.clone()).collect();
        assert_eq!(runs, vec![vec![4, 4], vec![4], vec![30], vec![2, 3, 5]], "runs of at most 10, oldest first");
    }

    /// A queue without spacing (write batches) never waits between runs.
    #[tokio::test(start_paused = true)]
    async fn an_unspaced_queue_runs_at_once() {
        let queue = GroupQueue::<u32, u32>::new("the test's batch");
        let recorder = Recorder::default();
        let start = Instant::now();
        for call in 0..3 {
            queue.submit(&recorder, call).await.unwrap();
        }
        let runs = recorder.0.lock().unwrap().clone();
        assert!(runs.iter().all(|(at, _)| *at == start), "{runs:?}");
    }
}
