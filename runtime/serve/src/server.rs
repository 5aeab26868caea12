//! Running the two listeners (HTTP and gRPC) until a shutdown signal, then draining.

use std::future::{Future, IntoFuture};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::model::Models;
use crate::state::{RequestLimits, ServerState};

/// Where to listen.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Listen {
    /// Address of both listeners (default 127.0.0.1: only this machine).
    pub host: IpAddr,
    /// HTTP/REST port (Triton's default 8000); 0 picks a free one.
    pub http_port: u16,
    /// gRPC port (Triton's default 8001); 0 picks a free one.
    pub grpc_port: u16,
}

impl Default for Listen {
    fn default() -> Self {
        Self {
            host: IpAddr::from([127, 0, 0, 1]),
            http_port: 8000,
            grpc_port: 8001,
        }
    }
}

/// A server whose ports are bound (so their numbers are known) but which is not serving yet.
pub struct BoundServer {
    http: TcpListener,
    grpc: TcpListener,
    state: Arc<ServerState>,
    drain_delay: Duration,
}

impl BoundServer {
    /// Binds both ports for `models`; an error names the address that could not be bound.
    pub async fn bind(models: Models, listen: &Listen, limits: RequestLimits) -> io::Result<Self> {
        let bind = |port: u16, what: &'static str| {
            let addr = SocketAddr::new(listen.host, port);
            async move {
                TcpListener::bind(addr)
                    .await
                    .map_err(|e| io::Error::new(e.kind(), format!("{what} port {addr}: {e}")))
            }
        };
        let http = bind(listen.http_port, "HTTP").await?;
        let grpc = bind(listen.grpc_port, "gRPC").await?;
        Ok(Self {
            http,
            grpc,
            state: Arc::new(ServerState::new(models, limits)),
            drain_delay: Duration::ZERO,
        })
    }

    /// After the shutdown signal, keep serving for `delay` while readiness answers not-ready
    /// (HTTP 503 `{"ready": false}`, gRPC `ready: false`), so that a load balancer or
    /// Kubernetes takes the server out of rotation before it stops accepting connections.
    pub fn drain_delay(mut self, delay: Duration) -> Self {
        self.drain_delay = delay;
        self
    }

    /// The bound HTTP address.
    pub fn http_addr(&self) -> io::Result<SocketAddr> {
        self.http.local_addr()
    }

    /// The bound gRPC address.
    pub fn grpc_addr(&self) -> io::Result<SocketAddr> {
        self.grpc.local_addr()
    }

    /// Serves until `shutdown` completes, then answers not-ready for the drain delay, stops
    /// accepting connections, lets the requests in flight finish, and returns.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) -> io::Result<()> {
        let (stop_tx, stop_rx) = watch::channel(false);
        let state = self.state.clone();
        let drain_delay = self.drain_delay;
        tokio::spawn(async move {
            shutdown.await;
            state.begin_stopping();
            tokio::time::sleep(drain_delay).await;
            let _ = stop_tx.send(true);
        });
        let stopped = |mut rx: watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|&s| s).await;
        };
        let http = axum::serve(self.http, crate::http::router(self.state.clone()))
            .with_graceful_shutdown(stopped(stop_rx.clone()));
        let grpc = tonic::transport::Server::builder()
            .add_service(crate::grpc::service(self.state.clone()))
            .serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(self.grpc),
                stopped(stop_rx),
            );
        let (h, g) = tokio::join!(http.into_future(), grpc);
        h?;
        g.map_err(io::Error::other)
    }
}

/// Completes on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
