//! The proxy: accept loops on qnet listeners, one hyper connection per client (HTTP/1.1 with
//! keep-alive, or h2c by prior knowledge), a route per request, the request streamed to the
//! guest over a pooled connection and the response streamed back.
//!
//! Everything runs on one thread with a current-thread tokio runtime; qnet's reactor thread
//! wakes its tasks. A request is logged (target `qhttp::access`) and counted when its response
//! body ends, so the line carries the bytes really sent and the time to the last byte.

use std::collections::HashMap;
use std::convert::Infallible;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, HOST};
use http::{HeaderValue, Request, Response, StatusCode, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use qnet_client::{AsyncTcpListener, AsyncTcpStream};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::Notify;

use crate::body::{full, Counted, Limited, ProxyBody};
use crate::config::Config;
use crate::headers::{add_forwarded, strip_hop_by_hop};
use crate::metrics::{Metrics, StackCounters};
use crate::route::Router;
use crate::upstream::{failure_status, Pool};

/// Connections waiting to be accepted, per listener.
const BACKLOG: u32 = 1024;
/// How long a connection cut for idleness gets to finish what it is writing.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// A running proxy; stops (and closes its listeners) when dropped.
pub struct ProxyHandle {
    stop: Arc<Notify>,
    thread: Option<JoinHandle<()>>,
    metrics: Arc<Metrics>,
}

impl ProxyHandle {
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Stops the proxy and waits for its thread.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stop.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for ProxyHandle {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Starts a proxy on the qnet stack `client` is attached to. Listeners are bound before this
/// returns, so a port in use is an error here, not a log line later. `stack` supplies the
/// stack's own counters to the metrics endpoint.
pub fn start(
    cfg: Config,
    client: qnet_client::Client,
    stack: Option<StackCounters>,
) -> anyhow::Result<ProxyHandle> {
    cfg.validate()?;
    let any = |port| SocketAddr::from((Ipv4Addr::UNSPECIFIED, port));
    let mut listeners = Vec::new();
    for l in &cfg.listeners {
        let listener = AsyncTcpListener::bind(&client, any(l.port), BACKLOG)
            .with_context(|| format!("qhttp: listening on port {}", l.port))?;
        listeners.push((listener, Arc::new(Router::new(&l.routes))));
    }
    let metrics_listener = cfg
        .metrics_port
        .map(|p| {
            AsyncTcpListener::bind(&client, any(p), 64)
                .with_context(|| format!("qhttp: metrics on port {p}"))
        })
        .transpose()?;
    let metrics = Arc::new(Metrics::new(client.clone(), stack));

    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(cfg.timeouts.header_read())
        .max_buf_size(cfg.limits.header_bytes)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(cfg.limits.header_bytes).unwrap_or(u32::MAX));
    let ring = client.clone();
    let shared = Arc::new(Shared {
        pool: Pool::new(client, cfg.timeouts.upstream_connect()),
        cfg,
        metrics: metrics.clone(),
        per_client: Mutex::new(HashMap::new()),
        builder,
        epoch: Instant::now(),
    });

    let stop = Arc::new(Notify::new());
    let stopped = stop.clone();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .enable_io()
        .build()
        .context("qhttp: building the runtime")?;
    let thread = std::thread::Builder::new()
        .name("qhttp".into())
        .spawn(move || {
            runtime.block_on(async move {
                // Ring events wake this runtime directly (its epoll), not through a thread.
                if let Err(e) = ring.spawn_reactor_task() {
                    tracing::warn!("qhttp: ring reactor on a thread instead: {e}");
                }
                for (listener, router) in listeners {
                    tokio::spawn(accept_loop(shared.clone(), listener, router));
                }
                if let Some(l) = metrics_listener {
                    tokio::spawn(metrics_loop(shared.metrics.clone(), l));
                }
                stopped.notified().await;
            });
        })
        .context("qhttp: starting its thread")?;
    Ok(ProxyHandle {
        stop,
        thread: Some(thread),
        metrics,
    })
}

struct Shared {
    cfg: Config,
    pool: Arc<Pool>,
    metrics: Arc<Metrics>,
    per_client: Mutex<HashMap<IpAddr, usize>>,
    builder: auto::Builder<TokioExecutor>,
    epoch: Instant,
}

impl Shared {
    /// Counts a connection from `ip`, or refuses it past the per-client limit.
    fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<Admitted> {
        let mut map = self.per_client.lock().unwrap_or_else(|p| p.into_inner());
        let n = map.entry(ip).or_insert(0);
        if *n >= self.cfg.limits.connections_per_client {
            return None;
        }
        *n += 1;
        Some(Admitted {
            shared: self.clone(),
            ip,
        })
    }
}

/// One admitted connection; uncounted on drop.
struct Admitted {
    shared: Arc<Shared>,
    ip: IpAddr,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut map = self
            .shared
            .per_client
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

async fn accept_loop(shared: Arc<Shared>, listener: AsyncTcpListener, router: Arc<Router>) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(a) => a,
            Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => return,
            Err(e) => {
                // Out of sockets or buffers: back off rather than spin; the backlog holds.
                tracing::warn!("qhttp: accept: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let Some(admitted) = shared.admit(peer.ip()) else {
            shared.metrics.connections_rejected.inc();
            tokio::spawn(reject(stream, peer, shared.metrics.clone()));
            continue;
        };
        tokio::spawn(serve_connection(
            shared.clone(),
            router.clone(),
            stream,
            peer,
            admitted,
        ));
    }
}

/// Answers a connection over the per-client limit with 429 and closes it.
async fn reject(mut stream: AsyncTcpStream, peer: SocketAddr, metrics: Arc<Metrics>) {
    const BODY: &str = "too many connections from your address\n";
    let reply = format!(
        "HTTP/1.1 429 Too Many Requests\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{BODY}",
        BODY.len()
    );
    let _ = stream.write_all(reply.as_bytes()).await;
    let _ = stream.shutdown().await;
    log_connection_level(&metrics, peer, 429, "connection limit");
}

/// Logs and counts an answer given to a connection before any request was routed: no method,
/// host, path or route.
fn log_connection_level(metrics: &Metrics, peer: SocketAddr, status: u16, note: &str) {
    access_line("-", "-", "-", peer, status, 0, Duration::ZERO, None, note);
    metrics.request("-", status, Duration::ZERO);
}

/// When the connection last moved a byte, and how many requests it has in flight.
struct Activity {
    last_ms: AtomicU64,
    in_flight: AtomicUsize,
    epoch: Instant,
}

impl Activity {
    fn touch(&self) {
        self.last_ms
            .store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// Resolves once the connection has had nothing in flight and no bytes moving for `idle`.
    async fn idle_for(&self, idle: Duration) {
        loop {
            let now = self.epoch.elapsed().as_millis() as u64;
            let quiet =
                Duration::from_millis(now.saturating_sub(self.last_ms.load(Ordering::Relaxed)));
            if self.in_flight.load(Ordering::Relaxed) == 0 && quiet >= idle {
                return;
            }
            tokio::time::sleep(idle.saturating_sub(quiet).max(Duration::from_millis(50))).await;
        }
    }
}

/// The client connection, noting activity as bytes move.
struct Tracked {
    inner: AsyncTcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Tracked {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        if r.is_ready() {
            this.activity.touch();
        }
        r
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write(cx, buf);
        if r.is_ready() {
            this.activity.touch();
        }
        r
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

async fn serve_connection(
    shared: Arc<Shared>,
    router: Arc<Router>,
    stream: AsyncTcpStream,
    peer: SocketAddr,
    _admitted: Admitted,
) {
    let metrics = shared.metrics.clone();
    metrics.connections.inc();
    metrics.connections_open.inc();
    let _ = stream.set_nodelay(true);
    let activity = Arc::new(Activity {
        last_ms: AtomicU64::new(0),
        in_flight: AtomicUsize::new(0),
        epoch: shared.epoch,
    });
    activity.touch();
    let io = TokioIo::new(Tracked {
        inner: stream,
        activity: activity.clone(),
    });
    let svc = {
        let (shared, activity) = (shared.clone(), activity.clone());
        service_fn(move |req| handle(shared.clone(), router.clone(), peer, activity.clone(), req))
    };
    let conn = shared.builder.serve_connection(io, svc);
    tokio::pin!(conn);
    let idle = shared.cfg.timeouts.idle();
    let result = tokio::select! {
        r = conn.as_mut() => r,
        _ = activity.idle_for(idle) => {
            tracing::debug!(%peer, "qhttp: closing an idle connection");
            conn.as_mut().graceful_shutdown();
            tokio::time::timeout(CLOSE_GRACE, conn.as_mut()).await.unwrap_or(Ok(()))
        }
    };
    if let Err(e) = result {
        connection_error(&metrics, peer, &*e);
    }
    metrics.connections_open.dec();
}

/// Logs a connection that ended in an HTTP-level error hyper answered itself (400, 431) or
/// that was cut for taking too long over its headers (408).
fn connection_error(
    metrics: &Metrics,
    peer: SocketAddr,
    e: &(dyn std::error::Error + Send + Sync + 'static),
) {
    let Some(h) = e.downcast_ref::<hyper::Error>() else {
        tracing::debug!(%peer, "qhttp: connection ended: {e}");
        return;
    };
    let status = if h.is_parse_too_large() {
        431
    } else if h.is_parse() || h.is_parse_status() {
        400
    } else if h.is_timeout() {
        408
    } else {
        tracing::debug!(%peer, "qhttp: connection ended: {e}");
        return;
    };
    log_connection_level(metrics, peer, status, &e.to_string());
}

/// What the access log and metrics need to know about one request.
struct Exchange {
    method: String,
    host: String,
    path: String,
    peer: SocketAddr,
    route: String,
    upstream: Option<SocketAddr>,
    start: Instant,
    metrics: Arc<Metrics>,
    activity: Arc<Activity>,
}

impl Exchange {
    /// Wraps `body` so that the request is logged and counted when it ends.
    fn respond(
        self,
        status: StatusCode,
        parts: http::response::Parts,
        body: ProxyBody,
        note: &'static str,
    ) -> Response<ProxyBody> {
        let code = status.as_u16();
        let counted = Counted::new(
            body,
            Box::new(move |bytes, complete| {
                let took = self.start.elapsed();
                let note = if complete { note } else { "response cut short" };
                access_line(
                    &self.method,
                    &self.host,
                    &self.path,
                    self.peer,
                    code,
                    bytes,
                    took,
                    self.upstream,
                    note,
                );
                self.metrics.request(&self.route, code, took);
                self.activity.in_flight.fetch_sub(1, Ordering::Relaxed);
                self.activity.touch();
            }),
        );
        Response::from_parts(parts, counted.boxed())
    }

    /// A response of the proxy's own (an error).
    fn error(self, status: StatusCode, why: &'static str) -> Response<ProxyBody> {
        let (mut parts, ()) = Response::new(()).into_parts();
        parts.status = status;
        parts.headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        let text = format!(
            "{} {}: {why}\n",
            status.as_u16(),
            status.canonical_reason().unwrap_or("")
        );
        self.respond(status, parts, full(text), why)
    }
}

#[allow(clippy::too_many_arguments)]
fn access_line(
    method: &str,
    host: &str,
    path: &str,
    peer: SocketAddr,
    status: u16,
    bytes: u64,
    took: Duration,
    upstream: Option<SocketAddr>,
    note: &str,
) {
    tracing::info!(
        target: "qhttp::access",
        method,
        host,
        path,
        status,
        bytes,
        duration_us = took.as_micros() as u64,
        client = %peer,
        upstream = %upstream.map_or_else(|| "-".to_string(), |u| u.to_string()),
        note,
    );
}

async fn handle(
    shared: Arc<Shared>,
    router: Arc<Router>,
    peer: SocketAddr,
    activity: Arc<Activity>,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    activity.in_flight.fetch_add(1, Ordering::Relaxed);
    let host = req
        .headers()
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .or_else(|| req.uri().authority().map(|a| a.to_string()));
    let path = req
        .uri()
        .path_and_query()
        .map_or_else(|| "/".to_string(), |p| p.as_str().to_string());
    let mut exchange = Exchange {
        method: req.method().to_string(),
        host: host.clone().unwrap_or_else(|| "-".into()),
        path: path.clone(),
        peer,
        route: "-".into(),
        upstream: None,
        start: Instant::now(),
        metrics: shared.metrics.clone(),
        activity,
    };
    let Some(route) = router.route(host.as_deref(), req.uri().path()) else {
        return Ok(exchange.error(StatusCode::NOT_FOUND, "no route for this host and path"));
    };
    let upstream = route.upstream.addr();
    exchange.route = route.name.to_string();
    exchange.upstream = Some(upstream);

    let cfg = &shared.cfg;
    let limit = cfg.limits.body_bytes;
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let (Some(limit), Some(len)) = (limit, declared) {
        if len > limit {
            return Ok(exchange.error(StatusCode::PAYLOAD_TOO_LARGE, "request body over the limit"));
        }
    }

    let (mut parts, body) = req.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    add_forwarded(
        &mut parts.headers,
        peer.ip(),
        host.as_deref(),
        cfg.trust_forwarded,
    );
    if !parts.headers.contains_key(HOST) {
        // An HTTP/2 request names its host in the URI only; HTTP/1.1 needs the field.
        if let Some(h) = host.as_deref().and_then(|h| HeaderValue::from_str(h).ok()) {
            parts.headers.insert(HOST, h);
        }
    }
    parts.version = Version::HTTP_11;
    // Origin form: the connection already names the guest.
    parts.uri = match path.parse() {
        Ok(u) => u,
        Err(_) => return Ok(exchange.error(StatusCode::BAD_REQUEST, "request target not usable")),
    };
    let exceeded = Arc::new(AtomicBool::new(false));
    let body = Limited::new(body, limit, exceeded.clone()).boxed();
    let sent = shared.pool.send(upstream, Request::from_parts(parts, body));
    let response = match tokio::time::timeout(cfg.timeouts.upstream_response(), sent).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            if exceeded.load(Ordering::Acquire) {
                return Ok(
                    exchange.error(StatusCode::PAYLOAD_TOO_LARGE, "request body over the limit")
                );
            }
            tracing::debug!(%upstream, "qhttp: upstream failed: {e:?}");
            let status = failure_status(&*e);
            let why = if status == StatusCode::GATEWAY_TIMEOUT {
                "connecting to the upstream timed out"
            } else {
                "the upstream refused or failed"
            };
            return Ok(exchange.error(status, why));
        }
        Err(_) => {
            return Ok(exchange.error(
                StatusCode::GATEWAY_TIMEOUT,
                "the upstream did not answer in time",
            ))
        }
    };
    let (mut parts, body) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    let status = parts.status;
    Ok(exchange.respond(status, parts, body, "-"))
}

async fn metrics_loop(metrics: Arc<Metrics>, listener: AsyncTcpListener) {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(10));
    let builder = Arc::new(builder);
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(a) => a,
            Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => return,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let (metrics, builder) = (metrics.clone(), builder.clone());
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<Incoming>| {
                let metrics = metrics.clone();
                async move {
                    let mut resp = if req.uri().path() == "/metrics" {
                        let mut r = Response::new(full(metrics.render()));
                        r.headers_mut().insert(
                            CONTENT_TYPE,
                            HeaderValue::from_static(
                                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                            ),
                        );
                        r
                    } else {
                        Response::new(full("metrics are at /metrics\n"))
                    };
                    if req.uri().path() != "/metrics" {
                        *resp.status_mut() = StatusCode::NOT_FOUND;
                    }
                    Ok::<_, Infallible>(resp)
                }
            });
            let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
        });
    }
}
