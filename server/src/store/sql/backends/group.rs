//! Group commit, the one mechanism under the write batches ([`super::batch`]) and the key
//! renewal groups ([`super::renewals`]): a call joins a queue; whoever holds the queue's leader
//! lock takes *every* call waiting and runs them together, and each caller gets its own answer
//! once that run is over. A run that fails is retried call by call, so a call that fails fails
//! alone. A run that has started completes even if its leader's caller stops waiting (the store
//! runs it on its own runtime: `OffloadedStore`); should a leader be dropped all the same, the
//! calls it took are answered as abandoned, never left waiting.

use crate::store::StoreError;
use std::future::Future;
use std::sync::Mutex;
use tokio::sync::oneshot;

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
    leader: tokio::sync::Mutex<()>,
}

impl<W, D> GroupQueue<W, D> {
    pub(in crate::store::sql) fn new(what: &'static str) -> Self {
        GroupQueue { what, waiting: Mutex::new(Vec::new()), leader: tokio::sync::Mutex::new(()) }
    }

    /// Runs `call` in the next run of `runner` (which answers its calls in order) and answers
    /// what it did, once that run is over.
    pub(in crate::store::sql) async fn submit(&self, runner: &impl Runs<W, D>, call: W) -> Result<D, StoreError> {
        let (reply, mut answer) = oneshot::channel();
        self.waiting.lock().unwrap_or_else(|e| e.into_inner()).push((call, reply));
        let leader = self.leader.lock().await;
        match answer.try_recv() {
            // A leader before us took it.
            Ok(done) => return done,
            // That leader was dropped before its run was over.
            Err(oneshot::error::TryRecvError::Closed) => return Err(self.abandoned()),
            Err(oneshot::error::TryRecvError::Empty) => {}
        }
        // Ours is still waiting (only leaders take calls), so it is among these.
        let waiting = std::mem::take(&mut *self.waiting.lock().unwrap_or_else(|e| e.into_inner()));
        let (calls, replies): (Vec<W>, Vec<_>) = waiting.into_iter().unzip();
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
        drop(leader);
        answer.await.unwrap_or_else(|_| Err(self.abandoned()))
    }

    fn abandoned(&self) -> StoreError {
        StoreError::Unavailable(format!("{} was abandoned before it committed", self.what))
    }
}
