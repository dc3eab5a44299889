//! The guest side: HTTP/1.1 connections to the guest's ports over qnet sockets, kept alive
//! and reused from a pool (hyper-util's), and the mapping of their failures to statuses.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{StatusCode, Uri};
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::client::legacy::Client as PoolClient;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use qnet_client::AsyncTcpStream;

use crate::body::ProxyBody;

/// How long an idle pooled connection to the guest is kept.
const POOL_IDLE: Duration = Duration::from_secs(90);

/// A pooled HTTP/1.1 client whose connections are qnet sockets.
pub type Pool = PoolClient<Connector, ProxyBody>;

pub fn pool(client: qnet_client::Client, connect_timeout: Duration) -> Pool {
    PoolClient::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(POOL_IDLE)
        // The client's Host is forwarded as it came; the URI only names the guest socket.
        .set_host(false)
        .build(Connector {
            client,
            timeout: connect_timeout,
        })
}

/// Opens qnet connections for the pool; the URI's authority is the guest's `ip:port`.
#[derive(Clone)]
pub struct Connector {
    client: qnet_client::Client,
    timeout: Duration,
}

impl tower_service::Service<Uri> for Connector {
    type Response = UpstreamIo;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<UpstreamIo>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let client = self.client.clone();
        let timeout = self.timeout;
        Box::pin(async move {
            let addr: SocketAddr = uri
                .authority()
                .and_then(|a| a.as_str().parse().ok())
                .ok_or_else(|| io::Error::other(format!("upstream {uri} is not ip:port")))?;
            let stream = tokio::time::timeout(timeout, AsyncTcpStream::connect(&client, addr))
                .await
                .map_err(|_| {
                    io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("connecting to {addr} took over {timeout:?}"),
                    )
                })??;
            stream.set_nodelay(true)?;
            Ok(UpstreamIo(TokioIo::new(stream)))
        })
    }
}

/// A connection to the guest as hyper's client sees it.
pub struct UpstreamIo(TokioIo<AsyncTcpStream>);

impl Connection for UpstreamIo {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl hyper::rt::Read for UpstreamIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for UpstreamIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}

/// The status a proxy answers when the exchange with the guest failed: 504 when connecting
/// timed out, 502 for everything else (refused, reset, a malformed response).
pub fn failure_status(err: &(dyn std::error::Error + 'static)) -> StatusCode {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<io::Error>() {
            if io.kind() == io::ErrorKind::TimedOut {
                return StatusCode::GATEWAY_TIMEOUT;
            }
        }
        source = e.source();
    }
    StatusCode::BAD_GATEWAY
}
