//! A TCP relay that a test puts between two parts to cut the network between them.
//!
//! The fault scenarios run every part on one host, so there is no link to pull: a part is given
//! the relay's address instead of its peer's, and the test cuts, blackholes and heals what
//! passes through it.
//!
//! - [`Relay::cut`] resets every connection (RST, as a firewall's `reject --reject-with
//!   tcp-reset` does) and resets new ones as soon as they are accepted: the part sees its peer
//!   gone at once.
//! - [`Relay::blackhole`] keeps every connection open and drops the bytes both ways, new
//!   connections included (accepted, then silent): the part sees a peer that says nothing, as
//!   behind a partition that drops packets, and finds out only by its own timeouts (HTTP/2
//!   keep-alive pings, say).
//! - [`Relay::heal`] passes bytes again: connections that lived through a blackhole carry on
//!   (bytes dropped meanwhile stay lost), new connections go through.
//!
//! ```no_run
//! # async fn example() -> std::io::Result<()> {
//! use hangar_testkit::relay::Relay;
//! let relay = Relay::start("127.0.0.1:7070".parse().unwrap()).await?;
//! let url = relay.url(); // give this to the part instead of its peer's address
//! relay.cut();
//! relay.heal();
//! # Ok(()) }
//! ```

use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

/// What the relay does with the bytes it is given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Forwards both ways.
    Open,
    /// Resets every connection, new ones as soon as they arrive.
    Cut,
    /// Keeps connections, drops every byte.
    Blackhole,
}

/// A relay on 127.0.0.1 (port 0) to one target; stops, closing every connection, when dropped.
pub struct Relay {
    addr: SocketAddr,
    mode: watch::Sender<Mode>,
    // Owns the accept loop, which owns every connection's task: dropping it aborts them all.
    _tasks: JoinSet<()>,
}

impl Relay {
    /// Listens on 127.0.0.1:0 and forwards every connection to `target`.
    pub async fn start(target: SocketAddr) -> std::io::Result<Relay> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (mode, _) = watch::channel(Mode::Open);
        let mut tasks = JoinSet::new();
        tasks.spawn(accept(listener, target, mode.clone()));
        Ok(Relay { addr, mode, _tasks: tasks })
    }

    /// The address parts are given instead of the target's.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR`, for parts that take a URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn mode(&self) -> Mode {
        *self.mode.borrow()
    }

    /// Resets every connection and every new one.
    pub fn cut(&self) {
        self.mode.send_replace(Mode::Cut);
    }

    /// Drops every byte, both ways, of every connection old and new.
    pub fn blackhole(&self) {
        self.mode.send_replace(Mode::Blackhole);
    }

    /// Forwards again.
    pub fn heal(&self) {
        self.mode.send_replace(Mode::Open);
    }
}

async fn accept(listener: TcpListener, target: SocketAddr, mode: watch::Sender<Mode>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((client, _)) = accepted else { continue };
                connections.spawn(relay(client, target, mode.subscribe()));
            }
            // Reaps finished connections so the set does not grow over a long test.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// Closes `stream` with a reset rather than a FIN: the peer's next read or write fails at once.
fn reset(stream: TcpStream) {
    let _ = stream.set_zero_linger();
    drop(stream);
}

async fn relay(client: TcpStream, target: SocketAddr, mut mode: watch::Receiver<Mode>) {
    if *mode.borrow_and_update() == Mode::Cut {
        return reset(client);
    }
    let Ok(server) = TcpStream::connect(target).await else {
        // The target is down: the client sees what it would have seen dialing it.
        return reset(client);
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let (mut up, mut down) = (vec![0u8; 16 * 1024], vec![0u8; 16 * 1024]);
    loop {
        // Read the mode at each chunk: a chunk read while blackholed is dropped, not delayed.
        let pass = |mode: &watch::Receiver<Mode>| *mode.borrow() == Mode::Open;
        tokio::select! {
            changed = mode.changed() => {
                if changed.is_err() || *mode.borrow_and_update() == Mode::Cut {
                    break;
                }
            }
            read = client_read.read(&mut up) => match read {
                Ok(0) | Err(_) => break,
                Ok(n) if pass(&mode) => if server_write.write_all(&up[..n]).await.is_err() { break },
                Ok(_) => {}
            },
            read = server_read.read(&mut down) => match read {
                Ok(0) | Err(_) => break,
                Ok(n) if pass(&mode) => if client_write.write_all(&down[..n]).await.is_err() { break },
                Ok(_) => {}
            },
        }
    }
    // Either side closed, or the relay was cut: reset both, so neither waits on a half-open
    // connection.
    if let (Ok(client), Ok(server)) = (client_read.reunite(client_write), server_read.reunite(server_write)) {
        reset(client);
        reset(server);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// An echo server on port 0.
    async fn echo() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = stream.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        addr
    }

    async fn round_trip(stream: &mut TcpStream, within: Duration) -> std::io::Result<Option<Vec<u8>>> {
        stream.write_all(b"ping").await?;
        let mut buf = [0u8; 4];
        match tokio::time::timeout(within, stream.read_exact(&mut buf)).await {
            Err(_) => Ok(None),
            Ok(Ok(_)) => Ok(Some(buf.to_vec())),
            Ok(Err(err)) => Err(err),
        }
    }

    #[tokio::test]
    async fn forwards_until_cut_resets_old_and_new_connections_and_heal_lets_new_ones_through() {
        let relay = Relay::start(echo().await).await.unwrap();
        let mut old = TcpStream::connect(relay.addr()).await.unwrap();
        assert_eq!(round_trip(&mut old, Duration::from_secs(5)).await.unwrap().as_deref(), Some(&b"ping"[..]));

        relay.cut();
        // The old connection is reset (a read fails or sees the end); a new one too.
        let mut buf = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(5), old.read(&mut buf)).await.expect("reset at once");
        assert!(matches!(read, Ok(0) | Err(_)), "the old connection ended: {read:?}");
        let mut new = TcpStream::connect(relay.addr()).await.unwrap();
        let read = tokio::time::timeout(Duration::from_secs(5), new.read(&mut buf)).await.expect("reset at once");
        assert!(matches!(read, Ok(0) | Err(_)), "a new connection is refused: {read:?}");

        relay.heal();
        let mut healed = TcpStream::connect(relay.addr()).await.unwrap();
        assert_eq!(round_trip(&mut healed, Duration::from_secs(5)).await.unwrap().as_deref(), Some(&b"ping"[..]));
    }

    #[tokio::test]
    async fn a_blackhole_keeps_connections_open_but_silent_until_healed() {
        let relay = Relay::start(echo().await).await.unwrap();
        let mut stream = TcpStream::connect(relay.addr()).await.unwrap();
        assert!(round_trip(&mut stream, Duration::from_secs(5)).await.unwrap().is_some());

        relay.blackhole();
        // Nothing comes back, and nothing closes: asserting an absence takes a fixed wait.
        assert_eq!(round_trip(&mut stream, Duration::from_millis(300)).await.unwrap(), None);

        relay.heal();
        // The ping sent into the blackhole is lost; a new one crosses.
        assert_eq!(round_trip(&mut stream, Duration::from_secs(5)).await.unwrap().as_deref(), Some(&b"ping"[..]));
    }
}
