//! The WAITING probe: a backend is ready once anything answers HTTP on its address. Any status
//! counts (a 404 or 401 still proves the server is up); a port that merely accepts connections
//! does not, because Docker's port proxy accepts before the container listens.
//!
//! The probe runs on the cold-start path of every session, so it retries fast at first: a
//! backend is usually listening within a few milliseconds to a few hundred of its start, and
//! every millisecond between its first answer and READY is a millisecond the session's first
//! request waits. The pauses between attempts grow from 1 ms ([`ProbeSchedule`]), capped at
//! 10 ms during the first two seconds and at 50 ms after, so that a slow starter costs no more
//! attempts than a fixed 50 ms interval would.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const ANSWER_TIMEOUT: Duration = Duration::from_secs(2);

/// One `GET /`: true when the first bytes back are an HTTP status line.
pub async fn answers_http(address: &str) -> bool {
    let Ok(Ok(mut stream)) = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(address)).await else {
        return false;
    };
    // The request is one small write: without Nagle's delay it leaves at once.
    let _ = stream.set_nodelay(true);
    let request = format!("GET / HTTP/1.1\r\nhost: {address}\r\nuser-agent: hangar-drone\r\nconnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).await.is_err() {
        return false;
    }
    let mut head = [0u8; 5];
    matches!(tokio::time::timeout(ANSWER_TIMEOUT, stream.read_exact(&mut head)).await, Ok(Ok(_)) if &head == b"HTTP/")
}

/// Probes until the backend answers (true) or `timeout` passes (false).
pub async fn wait_until_ready(address: String, timeout: Duration) -> bool {
    tokio::time::timeout(timeout, async {
        let mut schedule = ProbeSchedule::new(Instant::now());
        while !answers_http(&address).await {
            tokio::time::sleep(schedule.next_pause(Instant::now())).await;
        }
    })
    .await
    .is_ok()
}

/// The pauses between probe attempts: doubling from [`ProbeSchedule::FIRST`], at most
/// [`ProbeSchedule::FAST_CAP`] until [`ProbeSchedule::FAST_FOR`] has passed since the first
/// attempt, at most [`ProbeSchedule::SLOW_CAP`] after.
#[derive(Debug, Clone)]
pub(crate) struct ProbeSchedule {
    began: Instant,
    pause: Duration,
}

impl ProbeSchedule {
    pub(crate) const FIRST: Duration = Duration::from_millis(1);
    pub(crate) const FAST_CAP: Duration = Duration::from_millis(10);
    pub(crate) const FAST_FOR: Duration = Duration::from_secs(2);
    pub(crate) const SLOW_CAP: Duration = Duration::from_millis(50);

    pub(crate) fn new(began: Instant) -> Self {
        ProbeSchedule { began, pause: Duration::ZERO }
    }

    /// The pause before the next attempt, `now` being when the last one failed.
    pub(crate) fn next_pause(&mut self, now: Instant) -> Duration {
        let cap = if now.duration_since(self.began) < Self::FAST_FOR { Self::FAST_CAP } else { Self::SLOW_CAP };
        self.pause = if self.pause.is_zero() { Self::FIRST } else { (self.pause * 2).min(cap) };
        self.pause
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_pauses_double_from_a_millisecond_up_to_ten_then_fifty_after_two_seconds() {
        let began = Instant::now();
        let mut schedule = ProbeSchedule::new(began);
        let pauses: Vec<u64> = (0..7).map(|_| schedule.next_pause(began).as_millis() as u64).collect();
        assert_eq!(pauses, [1, 2, 4, 8, 10, 10, 10]);
        let later = began + ProbeSchedule::FAST_FOR;
        let pauses: Vec<u64> = (0..4).map(|_| schedule.next_pause(later).as_millis() as u64).collect();
        assert_eq!(pauses, [20, 40, 50, 50]);
    }

    /// A server that starts listening 55 ms after the probe began is found READY within a few
    /// milliseconds of its first answer: a fixed 50 ms interval would find it at 100 ms, 45 ms
    /// after it listened.
    #[tokio::test]
    async fn a_backend_that_starts_listening_late_is_ready_within_milliseconds_of_its_first_answer() {
        let address = {
            let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            probe.local_addr().unwrap()
        };
        let server = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(55)).await;
            let listener = tokio::net::TcpListener::bind(address).await.unwrap();
            let listening = Instant::now();
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 512];
            let _ = stream.read(&mut buf).await;
            stream.write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n").await.unwrap();
            listening
        });
        assert!(wait_until_ready(address.to_string(), Duration::from_secs(5)).await, "a 404 proves the server is up");
        let ready = Instant::now();
        let listening = server.await.unwrap();
        let after = ready.duration_since(listening);
        // The pause is at most FAST_CAP (10 ms); the rest is scheduling on a busy machine.
        assert!(after < Duration::from_millis(30), "READY {after:?} after the server listened");
    }

    #[tokio::test]
    async fn a_port_nobody_answers_on_is_not_ready_by_the_timeout() {
        let address = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let began = Instant::now();
        assert!(!wait_until_ready(address.to_string(), Duration::from_millis(100)).await);
        assert!(began.elapsed() < Duration::from_secs(1));
    }
}
