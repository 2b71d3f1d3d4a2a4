//! A port a replica serves beside its public TLS port (`/metrics`, the
//! plain-text health port): bound before the replica starts, so a taken
//! port fails the start before anything runs; served by a task that stops
//! when the [`SidePort`] is dropped.

use std::fmt::Display;
use std::future::Future;
use std::net::SocketAddr;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// A running side port; it stops when dropped.
pub struct SidePort {
    task: JoinHandle<()>,
    local_addr: SocketAddr,
}

impl SidePort {
    /// Binds `addr` when given; `flag` names the setting in the error.
    pub async fn bind(flag: &str, addr: Option<SocketAddr>) -> Result<Option<TcpListener>, String> {
        match addr {
            Some(addr) => {
                TcpListener::bind(addr).await.map(Some).map_err(|e| format!("{flag} {addr}: cannot listen: {e}"))
            }
            None => Ok(None),
        }
    }

    /// Runs `serve` on `listener` in a task; `what` names the port in logs.
    pub fn spawn<F, E>(
        listener: TcpListener,
        what: &'static str,
        serve: impl FnOnce(TcpListener) -> F,
    ) -> std::io::Result<SidePort>
    where
        F: Future<Output = Result<(), E>> + Send + 'static,
        E: Display,
    {
        let local_addr = listener.local_addr()?;
        let served = serve(listener);
        let task = tokio::spawn(async move {
            if let Err(e) = served.await {
                tracing::error!(error = %e, "the {what} port stopped");
            }
        });
        tracing::info!(%local_addr, "serving {what}");
        Ok(SidePort { task, local_addr })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }
}

impl Drop for SidePort {
    fn drop(&mut self) {
        self.task.abort();
    }
}
