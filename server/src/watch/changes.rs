//! A watch of every node and backend change, unfiltered, in revision order: the dashboard's
//! event stream (`GET /api/events`, server/src/dashboard/). It is the same hub subscription and
//! the same live phase as `WatchNodes` and `WatchBackends` ([`super::stream::Live`]: the ring,
//! catching up after an overflow, the cut-off of a watcher too far behind); only its lens is the
//! caller's. One stream rather than a node and a backend stream merged, so that its position is
//! one revision: everything up to the last one delivered has been seen, which is what a
//! reconnect resumes from.

use super::hub::{HubChange, WatchHub};
use super::stream::{Lens, Live, Step, WatchStream};
use crate::api::ApiError;
use crate::store::Revision;
use std::time::Duration;

pub struct ChangeWatch;

impl ChangeWatch {
    /// Every change after `start` (a revision the caller has seen everything up to; resolve
    /// "now" with `store.current_revision()` first), each turned into an event by `map` (`None`
    /// skips it), and a `bookmark(revision)` every `bookmark_interval` on a quiet stream.
    /// Errors (a compacted `start`) arrive as the stream's first item; the live phase ends with
    /// `WatchTooSlow` or `ShuttingDown`, naming the last revision delivered.
    pub fn stream<R, M, B>(
        hub: WatchHub,
        start: Revision,
        bookmark_interval: Option<Duration>,
        map: M,
        bookmark: B,
    ) -> WatchStream<R>
    where
        R: Send + 'static,
        M: FnMut(&HubChange) -> Option<R> + Send + 'static,
        B: Fn(Revision) -> R + Send + 'static,
    {
        let setup = async_stream::stream! {
            let subscription = match hub.subscribe(start).await {
                Ok(subscription) => subscription,
                Err(err) => { yield Err(ApiError::from(err)); return; }
            };
            let lens: Box<dyn Lens<Response = R>> = Box::new(Mapped { map, bookmark });
            yield Ok(Step::Live(Live::new(hub, subscription, start, lens, bookmark_interval)));
        };
        WatchStream::new(crate::metrics::WatchKind::Dashboard, Box::pin(setup))
    }
}

/// Every change, through the caller's `map`.
struct Mapped<M, B> {
    map: M,
    bookmark: B,
}

impl<R, M, B> Lens for Mapped<M, B>
where
    R: Send + 'static,
    M: FnMut(&HubChange) -> Option<R> + Send + 'static,
    B: Fn(Revision) -> R + Send + 'static,
{
    type Response = R;

    fn classify(&mut self, change: &HubChange) -> Option<R> {
        (self.map)(change)
    }

    fn bookmark(&self, revision: Revision) -> R {
        (self.bookmark)(revision)
    }
}
