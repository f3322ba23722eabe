//! The executor's Unix socket: a private directory, a 0600 file, stale sockets replaced and live
//! ones refused, and the peer's credentials carried into every request.

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{UnixListener, UnixStream};
use tonic::transport::server::Connected;

use super::authority::AuthorityRewrite;

/// Longest socket path Linux accepts: `sun_path` holds 108 bytes including the final NUL.
pub const MAX_SOCKET_PATH_BYTES: usize = 107;

/// Why the socket could not be set up. Each names the path and what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error("socket path {path} is {len} bytes long; Unix sockets allow at most {MAX_SOCKET_PATH_BYTES}")]
    PathTooLong { path: PathBuf, len: usize },
    #[error("socket path {0} has no parent directory")]
    NoParent(PathBuf),
    #[error("cannot create socket directory {dir}: {source}")]
    CreateDir { dir: PathBuf, source: std::io::Error },
    #[error(
        "socket directory {dir} has mode {mode:04o}; it must not be accessible to group or others (use a 0700 directory)"
    )]
    InsecureDirectory { dir: PathBuf, mode: u32 },
    #[error("another executor is already serving on {0}")]
    AlreadyServing(PathBuf),
    #[error("{0} exists and is not a socket; refusing to replace it")]
    NotASocket(PathBuf),
    #[error("cannot bind socket {path}: {source}")]
    Bind { path: PathBuf, source: std::io::Error },
}

/// Creates the listening socket: a 0700 directory (created if missing), a stale socket from a
/// dead executor replaced, a live one refused, the socket file 0600.
pub fn bind_socket(path: &Path) -> Result<UnixListener, SocketError> {
    use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};

    let len = path.as_os_str().len();
    if len > MAX_SOCKET_PATH_BYTES {
        return Err(SocketError::PathTooLong { path: path.to_path_buf(), len });
    }
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        Some(_) => PathBuf::from("."),
        None => return Err(SocketError::NoParent(path.to_path_buf())),
    };
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|source| SocketError::CreateDir { dir: dir.clone(), source })?;
    }
    // An existing directory is not chmod-ed behind the operator's back; it must already be private.
    let mode =
        std::fs::metadata(&dir).map_err(|source| SocketError::CreateDir { dir: dir.clone(), source })?.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(SocketError::InsecureDirectory { dir, mode });
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => return Err(SocketError::AlreadyServing(path.to_path_buf())),
            Err(_) => {
                tracing::info!(path = %path.display(), "replacing stale executor socket");
                std::fs::remove_file(path).map_err(|source| SocketError::Bind { path: path.to_path_buf(), source })?;
            }
        },
        Ok(_) => return Err(SocketError::NotASocket(path.to_path_buf())),
        Err(_) => {}
    }
    let listener = UnixListener::bind(path).map_err(|source| SocketError::Bind { path: path.to_path_buf(), source })?;
    // The 0700 directory already keeps others out between bind and chmod.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|source| SocketError::Bind { path: path.to_path_buf(), source })?;
    Ok(listener)
}

/// What the server knows about one connection; tonic puts it in every request's extensions.
#[derive(Clone, Debug)]
pub struct PeerInfo {
    /// `None` when the kernel would not say (then the peer is refused).
    pub uid: Option<u32>,
    pub pid: Option<i32>,
    pub allowed: bool,
    pub(super) handshaken: Arc<AtomicBool>,
}

/// A Unix stream that carries its [`PeerInfo`] into tonic. What the client sends passes through
/// an [`AuthorityRewrite`], so clients that send a socket path as `:authority` are served too.
pub struct PeerConnection {
    stream: UnixStream,
    info: PeerInfo,
    rewrite: AuthorityRewrite,
    client_closed: bool,
}

impl PeerConnection {
    pub(super) fn new(stream: UnixStream, info: PeerInfo) -> Self {
        PeerConnection { stream, info, rewrite: AuthorityRewrite::default(), client_closed: false }
    }
}

impl Connected for PeerConnection {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> PeerInfo {
        self.info.clone()
    }
}

impl AsyncRead for PeerConnection {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        loop {
            if !this.rewrite.output().is_empty() || buf.remaining() == 0 {
                this.rewrite.take_output(buf);
                return Poll::Ready(Ok(()));
            }
            if this.client_closed {
                return Poll::Ready(Ok(()));
            }
            let mut chunk = [0u8; 8192];
            let mut read = ReadBuf::new(&mut chunk);
            std::task::ready!(Pin::new(&mut this.stream).poll_read(cx, &mut read))?;
            if read.filled().is_empty() {
                this.rewrite.finish();
                this.client_closed = true;
            } else {
                this.rewrite.push(read.filled());
            }
        }
    }
}

impl AsyncWrite for PeerConnection {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}
