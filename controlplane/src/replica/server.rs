//! The replica's one gRPC port: TLS, HTTP/2 keep-alive, stream and
//! connection limits, graceful stop.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::{Connected, Router, TcpConnectInfo};
use tonic::transport::{Server, ServerTlsConfig};

/// Most open connections the port accepts at once; further clients wait in
/// the kernel's backlog until one closes (nodes connect to any replica, so a
/// fleet-wide reconnect storm must not exhaust file descriptors). Every node
/// holds one connection, so the bound is also bounded by the process's
/// file-descriptor limit, see [`connection_limit`].
pub const MAX_CONNECTIONS: usize = 131_072;
/// File descriptors kept free for the store, peers and logs.
const RESERVED_FDS: u64 = 1024;

/// Raises the soft file-descriptor limit to the hard one and returns how
/// many connections the port may hold: every node keeps one open.
pub fn connection_limit() -> usize {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let soft = match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => hard,
            Err(e) => {
                tracing::warn!(error = %e, soft, hard, "cannot raise the file-descriptor limit");
                soft
            }
        },
        Ok((soft, _)) => soft,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the file-descriptor limit");
            4096
        }
    };
    let limit = usize::try_from(soft.saturating_sub(RESERVED_FDS)).unwrap_or(MAX_CONNECTIONS);
    limit.clamp(64, MAX_CONNECTIONS)
}
/// HTTP/2 streams (concurrent calls) one connection may open.
pub const MAX_CONCURRENT_STREAMS: u32 = 256;
/// Calls one connection may have in the services at once.
pub const MAX_CALLS_PER_CONNECTION: usize = 256;
/// Server-side HTTP/2 ping interval; a silent client is dropped after the timeout.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause after a failed accept (e.g. out of file descriptors) so the loop
/// does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// A server builder with the replica's transport settings.
pub(crate) fn builder(tls: ServerTlsConfig) -> Result<Server, tonic::transport::Error> {
    Ok(Server::builder()
        .tls_config(tls)?
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .concurrency_limit_per_connection(MAX_CALLS_PER_CONNECTION)
        // Snapshot chunks are megabytes; hyper's default windows are small.
        .http2_adaptive_window(Some(true)))
}

/// The running server: stop it with [`ServerTask::stop`].
pub(crate) struct ServerTask {
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), tonic::transport::Error>>,
}

impl ServerTask {
    /// Serves `router` on `listener` until stopped.
    pub(crate) fn spawn(router: Router, listener: TcpListener) -> Self {
        let (stop, stopped) = oneshot::channel::<()>();
        let limit = connection_limit();
        tracing::debug!(limit, "connection limit of the gRPC port");
        let incoming = limited_incoming(listener, limit);
        let task = tokio::spawn(router.serve_with_incoming_shutdown(incoming, async {
            // A dropped sender (handle dropped without shutdown) also stops the server.
            let _ = stopped.await;
        }));
        ServerTask { stop, task }
    }

    /// Stops accepting, lets open calls finish for up to `grace`, then cuts
    /// the remaining connections.
    pub(crate) async fn stop(self, grace: Duration) -> Result<(), tonic::transport::Error> {
        let _ = self.stop.send(());
        let mut task = self.task;
        match tokio::time::timeout(grace, &mut task).await {
            Ok(Ok(result)) => result,
            // The server task panicked: nothing left to stop.
            Ok(Err(join)) => {
                tracing::error!(error = %join, "server task failed");
                Ok(())
            }
            Err(_elapsed) => {
                tracing::warn!(?grace, "open calls did not finish in time; closing their connections");
                task.abort();
                Ok(())
            }
        }
    }
}

/// Accepted connections, at most `limit` open at once: the accept loop
/// takes a permit before accepting, and the connection returns it on close.
fn limited_incoming(listener: TcpListener, limit: usize) -> ReceiverStream<io::Result<LimitedConn>> {
    let (tx, rx) = mpsc::channel(1);
    let permits = Arc::new(Semaphore::new(limit));
    tokio::spawn(async move {
        loop {
            // The server drops the stream when it stops: end the loop and
            // drop the listener, which closes the port.
            let permit = tokio::select! {
                permit = Arc::clone(&permits).acquire_owned() => permit,
                _ = tx.closed() => break,
            };
            let Ok(permit) = permit else { break };
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                _ = tx.closed() => break,
            };
            let item = match accepted {
                Ok((stream, _peer)) => {
                    // serve_with_incoming skips tonic's own TCP settings.
                    if let Err(e) = stream.set_nodelay(true) {
                        tracing::debug!(error = %e, "cannot set TCP_NODELAY");
                    }
                    Ok(LimitedConn { stream, _permit: permit })
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    Err(e)
                }
            };
            if tx.send(item).await.is_err() {
                break;
            }
        }
    });
    ReceiverStream::new(rx)
}

/// A TCP connection holding one of the port's connection permits.
struct LimitedConn {
    stream: TcpStream,
    _permit: OwnedSemaphorePermit,
}

impl Connected for LimitedConn {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.stream.connect_info()
    }
}

impl AsyncRead for LimitedConn {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for LimitedConn {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}
