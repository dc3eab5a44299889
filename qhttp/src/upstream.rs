//! The guest side: HTTP/1.1 connections to the guest's ports over qnet sockets, kept alive in
//! a pool per upstream address, and the mapping of their failures to statuses.
//!
//! The pool is ours, on hyper's connection API: a connection goes back to the pool when its
//! response body ends (so no task is spawned per request to watch for that), a pooled
//! connection the guest closed while idle is noticed before the request is written and the
//! request goes to another one, and idle connections older than [`POOL_IDLE`] are dropped.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::Body;
use http_body_util::BodyExt;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use qnet_client::AsyncTcpStream;

use crate::body::{BoxError, Counted, OnDone, ProxyBody};

/// How long an idle pooled connection to the guest is kept.
pub const POOL_IDLE: Duration = Duration::from_secs(90);
/// Idle connections kept per upstream address.
const MAX_IDLE: usize = 1024;

type Sender = SendRequest<ProxyBody>;

/// Keep-alive connections to the guest, per upstream address.
pub struct Pool {
    client: qnet_client::Client,
    connect_timeout: Duration,
    idle: Mutex<HashMap<SocketAddr, Vec<(Sender, Instant)>>>,
}

impl Pool {
    pub fn new(client: qnet_client::Client, connect_timeout: Duration) -> Arc<Pool> {
        Arc::new(Pool {
            client,
            connect_timeout,
            idle: Mutex::new(HashMap::new()),
        })
    }

    /// Sends `req` (origin-form URI, Host set) to `addr` on a pooled connection or a new one.
    ///
    /// A pooled connection can be closed by the guest just as a request goes out on it (its
    /// keep-alive timeout); a request without a body and with an idempotent method is then sent
    /// again on a new connection, as nginx does, since the guest cannot have acted on it twice.
    pub async fn send(
        self: &Arc<Self>,
        addr: SocketAddr,
        mut req: Request<ProxyBody>,
    ) -> Result<Response<ProxyBody>, BoxError> {
        let replay = replayable(&req);
        let mut pooled_only = true;
        loop {
            let pooled = if pooled_only {
                self.checkout(addr)
            } else {
                None
            };
            let (mut sender, fresh) = match pooled {
                Some(s) => (s, false),
                None => (self.connect(addr).await?, true),
            };
            if !fresh && sender.ready().await.is_err() {
                continue; // closed while idle; nothing was sent on it
            }
            match sender.try_send_request(req).await {
                Ok(resp) => {
                    // The connection goes back to the pool when the body has ended; a body
                    // cut short leaves it unusable, and it is dropped.
                    let pool = Arc::downgrade(self);
                    let back: OnDone = Box::new(move |_, ended| {
                        if let (true, Some(pool)) = (ended, pool.upgrade()) {
                            pool.checkin(addr, sender);
                        }
                    });
                    let (parts, body) = resp.into_parts();
                    let body = Counted::new(body, back).map_err(Into::into).boxed();
                    return Ok(Response::from_parts(parts, body));
                }
                Err(mut e) => match (e.take_message(), &replay) {
                    // The pooled connection was gone before the request was written.
                    (Some(r), _) if !fresh => req = r,
                    // Written, but the connection closed or was reset with no answer: once
                    // more, on a new connection.
                    (None, Some(again)) if !fresh => {
                        req = again.build();
                        pooled_only = false;
                    }
                    _ => return Err(Box::new(e.into_error())),
                },
            }
        }
    }

    fn checkout(&self, addr: SocketAddr) -> Option<Sender> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let list = idle.get_mut(&addr)?;
        while let Some((sender, since)) = list.pop() {
            if !sender.is_closed() && since.elapsed() < POOL_IDLE {
                return Some(sender);
            }
        }
        None
    }

    fn checkin(&self, addr: SocketAddr, sender: Sender) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let list = idle.entry(addr).or_default();
        list.retain(|(s, since)| !s.is_closed() && since.elapsed() < POOL_IDLE);
        if list.len() < MAX_IDLE {
            list.push((sender, Instant::now()));
        }
    }

    async fn connect(&self, addr: SocketAddr) -> Result<Sender, BoxError> {
        let timeout = self.connect_timeout;
        let stream = tokio::time::timeout(timeout, AsyncTcpStream::connect(&self.client, addr))
            .await
            .map_err(|_| {
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("connecting to {addr} took over {timeout:?}"),
                )
            })??;
        stream.set_nodelay(true)?;
        let (sender, conn) = http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%addr, "qhttp: upstream connection ended: {e}");
            }
        });
        Ok(sender)
    }
}

/// What it takes to send a bodiless idempotent request again.
struct Replay {
    method: http::Method,
    uri: http::Uri,
    headers: http::HeaderMap,
}

impl Replay {
    fn build(&self) -> Request<ProxyBody> {
        let mut req = Request::new(crate::body::full(Bytes::new()));
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.uri.clone();
        *req.headers_mut() = self.headers.clone();
        req
    }
}

fn replayable(req: &Request<ProxyBody>) -> Option<Replay> {
    use http::Method;
    let idempotent = matches!(
        *req.method(),
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    );
    (idempotent && req.body().is_end_stream()).then(|| Replay {
        method: req.method().clone(),
        uri: req.uri().clone(),
        headers: req.headers().clone(),
    })
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
