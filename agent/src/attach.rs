//! Attaching to one of several controllers, forever.
//!
//! A node agent keeps one `Attach` stream open to some controller. Which one does not matter: any
//! controller serves any node, so when a stream breaks the agent moves on to the next controller
//! in its list, round-robin, after a jittered exponential delay. The delay starts over once a
//! controller welcomed the agent, so an agent whose healthy stream broke after hours reconnects
//! at once, while one that no controller accepts backs off to the cap. Every failure is logged
//! with the delay before the next try.
//!
//! What one stream does (hello, welcome, heartbeats, the agent's own messages) is the agent's
//! business: it implements [`Attach`], and [`attach_forever`] runs it.

use std::future::Future;

use hangar_client::{Credentials, HangarChannel};
use tokio_util::sync::CancellationToken;

use crate::{Backoff, connect_controller};

/// One agent's side of one `Attach` stream.
pub trait Attach: Send {
    /// Why the agent gives up for good: a refusal that retrying cannot fix. Use
    /// [`std::convert::Infallible`] for an agent that never gives up.
    type Refusal: Send;

    /// The kind of agent, for the log ("drone", "proxy").
    const AGENT: &'static str;

    /// One stream on a fresh connection to `attempt.controller()`, from the hello to the end of
    /// the stream. Call [`Attempt::welcomed`] once the controller's welcome arrived.
    fn stream(
        &mut self,
        attempt: &mut Attempt<'_>,
        channel: HangarChannel,
    ) -> impl Future<Output = StreamEnd<Self::Refusal>> + Send;
}

/// How one stream ended, as the agent tells [`attach_forever`].
#[derive(Debug)]
pub enum StreamEnd<R> {
    /// The controller ended the stream; attach again.
    Closed,
    /// The stream or something the agent did on it failed; attach again.
    Failed(anyhow::Error),
    /// The controller refused the agent in a way retrying cannot fix; stop.
    Refused(R),
}

/// A stream that ended normally or with an error: attach again either way.
impl<R> From<anyhow::Result<()>> for StreamEnd<R> {
    fn from(result: anyhow::Result<()>) -> Self {
        match result {
            Ok(()) => StreamEnd::Closed,
            Err(err) => StreamEnd::Failed(err),
        }
    }
}

/// One try at one controller.
#[derive(Debug)]
pub struct Attempt<'a> {
    controller: &'a str,
    welcomed: bool,
}

impl Attempt<'_> {
    /// The controller's URL.
    pub fn controller(&self) -> &str {
        self.controller
    }

    /// The controller welcomed the agent: the next reconnect starts from the shortest delay.
    pub fn welcomed(&mut self) {
        self.welcomed = true;
    }
}

/// Attaches `agent` to one of `controllers` (URLs, tried in turn) and re-attaches whenever a
/// stream ends, until `shutdown` is cancelled (`Ok`) or a controller refuses the agent (`Err`).
/// A stream in progress is dropped when `shutdown` is cancelled. Every connection is made with
/// `credentials`, whose files are read again each time (a rotated client certificate or token
/// is used from the next reconnect on).
///
/// # Panics
/// If `controllers` is empty.
pub async fn attach_forever<A: Attach>(
    controllers: &[String],
    credentials: &Credentials,
    mut backoff: Backoff,
    agent: &mut A,
    shutdown: &CancellationToken,
) -> Result<(), A::Refusal> {
    assert!(!controllers.is_empty(), "a {} needs at least one controller URL", A::AGENT);
    for controller in controllers.iter().cycle() {
        let mut attempt = Attempt { controller, welcomed: false };
        let end = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            end = connect_and_stream(agent, &mut attempt, credentials) => end,
        };
        if attempt.welcomed {
            backoff.reset();
        }
        let delay = backoff.next_delay();
        match end {
            StreamEnd::Closed => {
                tracing::warn!(agent = A::AGENT, %controller, retry_in = ?delay, "controller closed the stream")
            }
            StreamEnd::Failed(err) => {
                tracing::warn!(agent = A::AGENT, %controller, retry_in = ?delay, "attach stream failed: {err:#}")
            }
            StreamEnd::Refused(refusal) => return Err(refusal),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(delay) => {}
        }
    }
    unreachable!("cycling over a non-empty list never ends")
}

async fn connect_and_stream<A: Attach>(
    agent: &mut A,
    attempt: &mut Attempt<'_>,
    credentials: &Credentials,
) -> StreamEnd<A::Refusal> {
    match connect_controller(attempt.controller, credentials).await {
        Ok(channel) => agent.stream(attempt, channel).await,
        Err(err) => StreamEnd::Failed(err),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::time::Duration;

    use tokio::time::Instant;
    use tokio_stream::wrappers::TcpListenerStream;

    use super::*;

    /// A controller that accepts connections (what one stream does is up to the test's agent).
    struct FakeController {
        url: String,
        server: tokio::task::JoinHandle<()>,
    }

    impl FakeController {
        async fn start() -> FakeController {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let url = format!("http://{}", listener.local_addr().unwrap());
            let (_, health) = tonic_health::server::health_reporter();
            let server = tokio::spawn(async move {
                tonic::transport::Server::builder()
                    .add_service(health)
                    .serve_with_incoming(TcpListenerStream::new(listener))
                    .await
                    .expect("the fake controller serves");
            });
            FakeController { url, server }
        }
    }

    impl Drop for FakeController {
        fn drop(&mut self) {
            self.server.abort();
        }
    }

    /// A URL nothing listens on: its port was just free.
    async fn dead_controller() -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        format!("http://{}", listener.local_addr().unwrap())
    }

    /// What the test agent does on its next stream.
    enum Step {
        Close {
            welcome: bool,
        },
        Fail,
        Refuse(&'static str),
        /// Says so on `started`, then waits forever.
        Hang(tokio::sync::oneshot::Sender<()>),
    }

    /// An agent that plays `plan`, one step per stream, and notes when each stream began where.
    struct ScriptedAgent {
        plan: VecDeque<Step>,
        streams: Vec<(String, Instant)>,
    }

    impl ScriptedAgent {
        fn new(plan: impl IntoIterator<Item = Step>) -> Self {
            ScriptedAgent { plan: plan.into_iter().collect(), streams: Vec::new() }
        }
    }

    impl Attach for ScriptedAgent {
        type Refusal = &'static str;
        const AGENT: &'static str = "test";

        async fn stream(&mut self, attempt: &mut Attempt<'_>, _channel: HangarChannel) -> StreamEnd<&'static str> {
            self.streams.push((attempt.controller().to_string(), Instant::now()));
            match self.plan.pop_front().expect("the plan covers every stream") {
                Step::Close { welcome } => {
                    if welcome {
                        attempt.welcomed();
                    }
                    StreamEnd::Closed
                }
                Step::Fail => StreamEnd::Failed(anyhow::anyhow!("scripted failure")),
                Step::Refuse(why) => StreamEnd::Refused(why),
                Step::Hang(started) => {
                    let _ = started.send(());
                    std::future::pending().await
                }
            }
        }
    }

    fn quick_backoff() -> Backoff {
        Backoff::new(Duration::from_millis(1), Duration::from_millis(10))
    }

    #[tokio::test]
    async fn moves_round_robin_past_a_dead_controller_until_one_refuses() {
        let live = FakeController::start().await;
        let controllers = vec![dead_controller().await, live.url.clone()];
        let mut agent = ScriptedAgent::new([Step::Close { welcome: true }, Step::Fail, Step::Refuse("no such pool")]);

        let result = attach_forever(
            &controllers,
            &Credentials::default(),
            quick_backoff(),
            &mut agent,
            &CancellationToken::new(),
        )
        .await;

        assert_eq!(result, Err("no such pool"));
        let reached: Vec<_> = agent.streams.iter().map(|(controller, _)| controller.as_str()).collect();
        assert_eq!(reached, [live.url.as_str(); 3], "every other try goes to the dead controller and fails to connect");
    }

    #[tokio::test]
    async fn a_welcome_resets_the_backoff() {
        let live = FakeController::start().await;
        // Ten unwelcomed streams push the delay to 512–1024 ms; the welcome brings it back to 1 ms.
        let unwelcomed = (0..10).map(|_| Step::Close { welcome: false });
        let plan = unwelcomed.chain([Step::Close { welcome: true }, Step::Refuse("done")]);
        let mut agent = ScriptedAgent::new(plan);
        let backoff = Backoff::new(Duration::from_millis(1), Duration::from_secs(10));

        let result = attach_forever(
            std::slice::from_ref(&live.url),
            &Credentials::default(),
            backoff,
            &mut agent,
            &CancellationToken::new(),
        )
        .await;

        assert_eq!(result, Err("done"));
        let starts: Vec<Instant> = agent.streams.iter().map(|(_, at)| *at).collect();
        let before_welcome = starts[10] - starts[9];
        let after_welcome = starts[11] - starts[10];
        assert!(before_welcome >= Duration::from_millis(256), "the delay grew: {before_welcome:?}");
        assert!(after_welcome < Duration::from_millis(200), "the welcome reset the delay: {after_welcome:?}");
    }

    #[tokio::test]
    async fn shutdown_ends_a_stream_in_progress() {
        let live = FakeController::start().await;
        let (started, stream_started) = tokio::sync::oneshot::channel();
        let mut agent = ScriptedAgent::new([Step::Hang(started)]);
        let shutdown = CancellationToken::new();

        let (controllers, credentials) = ([live.url.clone()], Credentials::default());
        let attach = attach_forever(&controllers, &credentials, quick_backoff(), &mut agent, &shutdown);
        let stop = async {
            stream_started.await.unwrap();
            shutdown.cancel();
        };
        let (result, ()) = tokio::time::timeout(Duration::from_secs(10), async { tokio::join!(attach, stop) })
            .await
            .expect("attach_forever returns once shut down");

        assert_eq!(result, Ok(()));
    }
}
