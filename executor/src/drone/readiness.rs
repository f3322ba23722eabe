//! The WAITING probe: a backend is ready once anything answers HTTP on its address. Any status
//! counts (a 404 or 401 still proves the server is up); a port that merely accepts connections
//! does not, because Docker's port proxy accepts before the container listens.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const ANSWER_TIMEOUT: Duration = Duration::from_secs(2);
const PROBE_INTERVAL: Duration = Duration::from_millis(50);

/// One `GET /`: true when the first bytes back are an HTTP status line.
pub async fn answers_http(address: &str) -> bool {
    let Ok(Ok(mut stream)) = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(address)).await else {
        return false;
    };
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
        while !answers_http(&address).await {
            tokio::time::sleep(PROBE_INTERVAL).await;
        }
    })
    .await
    .is_ok()
}
