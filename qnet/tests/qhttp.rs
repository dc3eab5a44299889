//! qhttp end to end: `qnet serve --http-proxy` (stack and proxy in one process, on a TAP in a
//! fresh namespace), a guest-like upstream attached to that stack over the socket ring (a hyper
//! server on qnet's async sockets, in this process), and real clients on the kernel side of
//! the TAP: curl (HTTP/1.1 and h2c), python's http.client, wrk and raw sockets.

use std::convert::Infallible;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use qnet_client::AsyncTcpListener;
use quark_tests::*;
use sha2::{Digest, Sha256};

type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// The proxy's listener port; upstreams listen on 9001 and 9002.
const PROXY: u16 = 8080;
const METRICS: u16 = 9100;
/// A listener whose only route is for the host `only.test`.
const HOST_ONLY: u16 = 8081;

/// A stack with qhttp in a child `qnet serve`, and the test upstreams attached to it.
struct Rig {
    ns: Netns,
    child: Child,
    log: PathBuf,
    /// Connections the upstreams accepted.
    upstream_conns: Arc<AtomicUsize>,
}

impl Rig {
    fn start(tag: &str, proxy_config: &str) -> Rig {
        require_env(&["curl", "python3"]);
        let ns = Netns::new(tag);
        let dir = std::env::temp_dir();
        let socket = dir.join(format!("{}.sock", ns.name));
        let cfg = dir.join(format!("{}.json", ns.name));
        let log = dir.join(format!("{}.log", ns.name));
        std::fs::write(&cfg, proxy_config).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_qnet"))
            .args(["serve", "--netns", &ns.name, "--tap", "qtap0"])
            .args(["--addr", &format!("{STACK_IP}/24")])
            .args(["--peer-addr", &format!("{PEER_IP}/24")])
            .args([
                "--echo-port",
                "0",
                "--http-port",
                "0",
                "--udp-echo-port",
                "0",
            ])
            .arg("--socket")
            .arg(&socket)
            .arg("--http-proxy")
            .arg(&cfg)
            .env("QNET_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("starting qnet serve");
        // The proxy line comes after the stack is up and the proxy listens.
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        while !line.contains("qhttp proxy on ports") {
            line.clear();
            if out.read_line(&mut line).unwrap() == 0 {
                let _ = child.wait();
                panic!(
                    "qnet serve ended: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
        }
        std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
        let upstream_conns = Arc::new(AtomicUsize::new(0));
        let client = qnet_client::Client::connect(&socket).expect("attaching the upstream");
        let listeners = [9001, 9002].map(|port| {
            let any = SocketAddr::from(([0, 0, 0, 0], port));
            (AsyncTcpListener::bind(&client, any, 1024).unwrap(), port)
        });
        let closer =
            AsyncTcpListener::bind(&client, SocketAddr::from(([0, 0, 0, 0], 9003)), 64).unwrap();
        let conns = upstream_conns.clone();
        std::thread::spawn(move || upstream(client, listeners, closer, conns));
        Rig {
            ns,
            child,
            log,
            upstream_conns,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{STACK_IP}:{PROXY}{path}")
    }

    /// Runs a bash line in the namespace; returns stdout, failing on a non-zero exit.
    fn sh(&self, script: &str) -> String {
        let out = self.bash(script);
        assert!(
            out.status.success(),
            "{script}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn bash(&self, script: &str) -> std::process::Output {
        self.ns.cmd("bash").args(["-c", script]).output().unwrap()
    }

    /// `curl`'s status code and body. curl may fail after the status arrived (a proxy that
    /// answers 413 need not read the rest of the body), so its exit code is not judged.
    fn curl(&self, args: &str) -> (u16, String) {
        let out = self.bash(&format!("curl -sS -m 20 -w '\\n%{{http_code}}' {args}"));
        let out = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = out.rsplit_once('\n').unwrap_or(("", &out));
        (code.trim().parse().unwrap_or(0), body.to_string())
    }

    fn access_log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn metrics(&self) -> String {
        self.sh(&format!(
            "curl -sS -m 5 http://{STACK_IP}:{METRICS}/metrics"
        ))
    }

    /// The proxy process's peak resident memory, in KiB.
    fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// The guest's stand-in: `/echo` describes the request it got, `/sha` hashes the body it is
/// sent, `/bytes/N` streams N bytes of a pattern, `/slow/MS` answers after MS milliseconds.
fn upstream(
    client: qnet_client::Client,
    listeners: [(AsyncTcpListener, u16); 2],
    closer: AsyncTcpListener,
    conns: Arc<AtomicUsize>,
) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .enable_io()
        .build()
        .unwrap();
    rt.block_on(async move {
        client.spawn_reactor_task().unwrap();
        let mut servers = Vec::new();
        for (listener, port) in listeners {
            let conns = conns.clone();
            servers.push(tokio::spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    conns.fetch_add(1, Ordering::Relaxed);
                    tokio::spawn(async move {
                        let svc = hyper::service::service_fn(move |req| answer(port, req));
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), svc)
                            .await;
                    });
                }
            }));
        }
        servers.push(tokio::spawn(async move {
            while let Ok((s, _)) = closer.accept().await {
                tokio::spawn(answer_once_then_close(s));
            }
        }));
        for s in servers {
            let _ = s.await;
        }
    });
}

/// A keep-alive server that closes idle connections quickly and without notice (no
/// `Connection: close`), as servers with short keep-alive timeouts do: a proxy must not hand
/// such a connection its next request.
async fn answer_once_then_close(mut s: qnet_client::AsyncTcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let _ = s
        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nfresh\n")
        .await;
    tokio::time::sleep(Duration::from_millis(30)).await;
}

async fn answer(port: u16, req: Request<Incoming>) -> Result<Response<Body>, hyper::Error> {
    let path = req.uri().path().to_string();
    let text = |s: String| Response::new(http_body_util::Full::new(Bytes::from(s)).boxed());
    if path.starts_with("/sha") {
        let mut body = req.into_body();
        let (mut hash, mut len) = (Sha256::new(), 0u64);
        while let Some(frame) = body.frame().await {
            if let Some(d) = frame?.data_ref() {
                hash.update(d);
                len += d.len() as u64;
            }
        }
        return Ok(text(format!("{len} {:x}", hash.finalize())));
    }
    if let Some(n) = path.strip_prefix("/bytes/") {
        let total: u64 = n.parse().unwrap_or(0);
        let stream = futures_stream(total);
        return Ok(Response::new(BodyExt::boxed(StreamBody::new(stream))));
    }
    if let Some(ms) = path.strip_prefix("/slow/") {
        tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(0))).await;
        return Ok(text("slow\n".into()));
    }
    let h = |name: &str| {
        req.headers()
            .get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap_or("?").to_string())
            .collect::<Vec<_>>()
            .join("|")
    };
    Ok(text(format!(
        "port={port} path={} host={} xff={} xfp={} fwd={} x-drop={} te={}\n",
        req.uri(),
        h("host"),
        h("x-forwarded-for"),
        h("x-forwarded-proto"),
        h("forwarded"),
        h("x-drop"),
        h("te"),
    )))
}

/// `total` bytes of the test pattern in 256 KiB frames, produced as the client reads them.
fn futures_stream(
    total: u64,
) -> impl futures_util::Stream<Item = Result<Frame<Bytes>, Infallible>> + Send {
    let chunk = pattern_chunk();
    futures_util::stream::unfold(0u64, move |sent| {
        let chunk = chunk.clone();
        async move {
            if sent >= total {
                return None;
            }
            let n = (total - sent).min(chunk.len() as u64) as usize;
            Some((Ok(Frame::data(chunk.slice(..n))), sent + n as u64))
        }
    })
}

/// 256 KiB of the pattern the large transfers repeat.
fn pattern_chunk() -> Bytes {
    let mut buf = vec![0u8; 256 * 1024];
    Pattern::new(7).fill(&mut buf);
    Bytes::from(buf)
}

fn basic_config(extra: &str) -> String {
    format!(
        r#"{{"listeners": [{{"port": {PROXY}, "routes": [
            {{"host": "shop.test", "pathPrefix": "/", "upstream": 9002}},
            {{"pathPrefix": "/api", "upstream": 9002}},
            {{"pathPrefix": "/", "upstream": 9001}},
            {{"pathPrefix": "/refused", "upstream": 9009}},
            {{"pathPrefix": "/blackhole", "upstream": "10.77.0.99:80"}},
            {{"pathPrefix": "/closer", "upstream": 9003}}
        ]}}, {{"port": {HOST_ONLY}, "routes": [
            {{"host": "only.test", "upstream": 9001}}
        ]}}], "metricsPort": {METRICS}{extra}}}"#
    )
}

#[test]
fn routes_by_host_and_path_for_http1_h2c_and_python_with_forwarding_headers() {
    let rig = Rig::start("qh-route", &basic_config(""));
    let (code, body) = rig.curl(&rig.url("/hello?x=1"));
    assert_eq!(code, 200);
    assert!(body.starts_with("port=9001 path=/hello?x=1 "), "{body}");
    assert!(body.contains(&format!("xff={PEER_IP} xfp=http ")), "{body}");
    assert!(
        body.contains(&format!(
            "fwd=for={PEER_IP};proto=http;host=\"{STACK_IP}:{PROXY}\""
        )),
        "{body}"
    );
    let (_, body) = rig.curl(&rig.url("/api/v1"));
    assert!(body.starts_with("port=9002 "), "{body}");
    let (_, body) = rig.curl(&rig.url("/apiary"));
    assert!(body.starts_with("port=9001 "), "{body}");
    let (_, body) = rig.curl(&format!("-H 'Host: shop.test' {}", rig.url("/anything")));
    assert!(
        body.starts_with("port=9002 ") && body.contains("host=shop.test "),
        "{body}"
    );
    // Hop-by-hop fields stay on the client's hop; forged forwarding headers are replaced.
    let (_, body) = rig.curl(&format!(
        "-H 'Connection: keep-alive, X-Drop' -H 'X-Drop: 1' -H 'TE: trailers' \
         -H 'X-Forwarded-For: 6.6.6.6' {}",
        rig.url("/")
    ));
    assert!(body.trim_end().ends_with("x-drop= te="), "{body}");
    assert!(body.contains(&format!("xff={PEER_IP} ")), "{body}");

    // h2c with prior knowledge: the proxy speaks HTTP/2 to the client, HTTP/1.1 to the guest.
    let out = rig.sh(&format!(
        "curl -sS -m 10 --http2-prior-knowledge -w '\\n%{{http_version}}' -H 'Host: shop.test' {}",
        rig.url("/h2")
    ));
    assert!(
        out.starts_with("port=9002 path=/h2 host=shop.test "),
        "{out}"
    );
    assert!(out.trim_end().ends_with("\n2"), "{out}");

    // python's http.client: three requests on one keep-alive connection, one chunked upload.
    let py = r#"
import http.client, hashlib, sys
c = http.client.HTTPConnection(sys.argv[1], int(sys.argv[2]), timeout=10)
out = []
for path in ["/a", "/api/b", "/c"]:
    c.request("GET", path)
    r = c.getresponse()
    out.append("%d %s" % (r.status, r.read().decode().split()[0]))
data = b"chunk-" * 50000
c.request("POST", "/sha", body=iter([data[:100000], data[100000:]]), encode_chunked=True,
          headers={"Transfer-Encoding": "chunked"})
r = c.getresponse()
out.append(r.read().decode() == "%d %s" % (len(data), hashlib.sha256(data).hexdigest()))
sock_reused = c.sock is not None
print(out, sock_reused)
"#;
    let out = rig
        .ns
        .python_output(py, &[&STACK_IP.to_string(), &PROXY.to_string()]);
    assert_eq!(
        out,
        "['200 port=9001', '200 port=9002', '200 port=9001', True] True"
    );
    // A guest that drops idle connections: every request still gets through, on a new one.
    for pause in [0, 100, 0, 100] {
        std::thread::sleep(Duration::from_millis(pause));
        let got = rig.curl(&rig.url("/closer/x"));
        assert_eq!(got, (200, "fresh\n".to_string()), "{}", rig.access_log());
    }
    let py = r#"
import http.client, sys, time
c = http.client.HTTPConnection(sys.argv[1], int(sys.argv[2]), timeout=10)
ok = 0
for i in range(20):
    c.request("GET", "/closer/%d" % i)
    r = c.getresponse()
    ok += r.status == 200 and r.read() == b"fresh\n"
    time.sleep(0.01 * (i % 5))
print(ok)
"#;
    assert_eq!(
        rig.ns
            .python_output(py, &[&STACK_IP.to_string(), &PROXY.to_string()]),
        "20"
    );

    // Guest connections are pooled: far fewer than the requests made.
    let conns = rig.upstream_conns.load(Ordering::Relaxed);
    assert!(conns <= 4, "{conns} upstream connections for 13 requests");

    let log = rig.access_log();
    let line = log
        .lines()
        .find(|l| l.contains("path=\"/api/v1\""))
        .unwrap_or_else(|| panic!("no access line for /api/v1 in:\n{log}"));
    for field in [
        "qhttp::access",
        "method=\"GET\"",
        "status=200",
        "bytes=",
        "duration_us=",
        "upstream=127.0.0.1:9002",
    ] {
        assert!(line.contains(field), "{field} missing in {line}");
    }
}

#[test]
fn error_paths_answer_as_a_proxy_should_and_are_logged() {
    let rig = Rig::start(
        "qh-err",
        &basic_config(
            r#", "timeouts": {"headerReadMs": 600, "idleMs": 5000, "upstreamConnectMs": 400,
                "upstreamResponseMs": 500},
               "limits": {"headerBytes": 8192, "bodyBytes": 100000, "connectionsPerClient": 20}"#,
        ),
    );
    // Nothing listens on the route's port: 502.
    assert_eq!(rig.curl(&rig.url("/refused")).0, 502);
    // Nobody answers ARP for the upstream address: connecting times out, 504.
    assert_eq!(rig.curl(&rig.url("/blackhole")).0, 504);
    // The guest takes longer than upstreamResponseMs: 504.
    assert_eq!(rig.curl(&rig.url("/slow/2000")).0, 504);
    assert_eq!(rig.curl(&rig.url("/slow/10")).0, 200);
    // No route for the host: 404.
    let only = |host: &str| format!("-H 'Host: {host}' http://{STACK_IP}:{HOST_ONLY}/");
    assert_eq!(rig.curl(&only("other.test")).0, 404);
    assert_eq!(rig.curl(&only("only.test")).0, 200);
    // Headers over 8 KiB: 431.
    let big = "x".repeat(9000);
    assert_eq!(
        rig.curl(&format!("-H 'X-Big: {big}' {}", rig.url("/"))).0,
        431
    );
    // A body over the limit, declared or chunked: 413.
    assert_eq!(
        rig.curl(&format!(
            "--data-binary @<(head -c 200000 /dev/zero) {}",
            rig.url("/sha")
        ))
        .0,
        413
    );
    assert_eq!(
        rig.curl(&format!(
            "-H 'Transfer-Encoding: chunked' --data-binary @<(head -c 300000 /dev/zero) {}",
            rig.url("/sha")
        ))
        .0,
        413
    );
    let (code, body) = rig.curl(&format!(
        "-H 'Transfer-Encoding: chunked' --data-binary @<(head -c 99999 /dev/zero) {}",
        rig.url("/sha")
    ));
    assert_eq!((code, body.split(' ').next()), (200, Some("99999")));
    // A malformed request: 400 from the proxy, nothing reaches the guest.
    let before = rig.upstream_conns.load(Ordering::Relaxed);
    let raw = r#"
import socket, sys, time
def send(data, wait_close):
    s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
    s.sendall(data)
    t0 = time.time()
    got = b""
    while True:
        d = s.recv(4096)
        if not d: break
        got += d
    return got.split(b"\r\n")[0].decode(), time.time() - t0
print(send(b"GET / HTTP/1.1\r\nHost: a\r\nBad Header Line\r\n\r\n", True)[0])
# Slowloris: half a request head, then nothing; cut at the header timeout (0.6 s).
line, took = send(b"GET / HTTP/1.1\r\nHost: a\r\nX-Slow: ", True)
print(repr(line), 0.4 < took < 3)
"#;
    let out = rig
        .ns
        .python_output(raw, &[&STACK_IP.to_string(), &PROXY.to_string()]);
    assert_eq!(out, "HTTP/1.1 400 Bad Request\n'' True");
    assert_eq!(rig.upstream_conns.load(Ordering::Relaxed), before);
    // More connections from one address than connectionsPerClient: the extra ones get 429.
    let many = r#"
import socket, sys
addr = (sys.argv[1], int(sys.argv[2]))
held = [socket.create_connection(addr, timeout=5) for _ in range(20)]
extra = socket.create_connection(addr, timeout=5)
print(extra.recv(100).split(b"\r\n")[0].decode())
held[0].sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
print(held[0].recv(100).split(b"\r\n")[0].decode())
"#;
    let out = rig
        .ns
        .python_output(many, &[&STACK_IP.to_string(), &PROXY.to_string()]);
    assert_eq!(out, "HTTP/1.1 429 Too Many Requests\nHTTP/1.1 200 OK");

    let log = rig.access_log();
    for status in [404, 502, 504, 431, 413, 400, 408, 429] {
        assert!(
            log.lines()
                .any(|l| l.contains("qhttp::access") && l.contains(&format!("status={status}"))),
            "no access line with status {status} in:\n{log}"
        );
    }
    let metrics = rig.metrics();
    for want in [
        "qhttp_requests_total{route=\"*/refused\",status=\"502\"} 1",
        "qhttp_requests_total{route=\"*/blackhole\",status=\"504\"} 1",
        "qhttp_connections_rejected_total 1",
        "# TYPE qnet_tcp_retransmits counter",
        "qnet_tcp_accepted_total ",
        "qnet_ring_submissions_pending ",
    ] {
        assert!(metrics.contains(want), "{want} missing in:\n{metrics}");
    }
}

#[test]
fn one_gib_up_and_down_through_the_proxy_with_bounded_memory() {
    let rig = Rig::start("qh-gib", &basic_config(""));
    // A 64 MiB file of the pattern, sent 16 times: 1 GiB with a known SHA-256.
    let file = std::env::temp_dir().join(format!("{}.bin", rig.ns.name));
    {
        let chunk = pattern_chunk();
        let mut data = Vec::with_capacity(64 << 20);
        while data.len() < 64 << 20 {
            data.extend_from_slice(&chunk);
        }
        std::fs::write(&file, &data).unwrap();
    }
    let mut want = Sha256::new();
    let data = std::fs::read(&file).unwrap();
    for _ in 0..16 {
        want.update(&data);
    }
    let want = format!("{:x}", want.finalize());
    let f = file.display();
    // Upload, streamed in chunks (curl -T - sends chunked).
    let (code, body) = rig.curl(&format!(
        "-m 120 -T - {} < <(for i in $(seq 16); do cat {f}; done)",
        rig.url("/sha")
    ));
    assert_eq!(
        (code, body.as_str()),
        (200, format!("{} {want}", 1u64 << 30).as_str())
    );
    // Download: the guest streams the same bytes; curl hashes them.
    let out = rig.sh(&format!(
        "curl -sS -m 120 {} | sha256sum",
        rig.url(&format!("/bytes/{}", 1u64 << 30))
    ));
    assert_eq!(out.split_whitespace().next(), Some(want.as_str()));
    let _ = std::fs::remove_file(&file);
    // Stack and proxy together: the bodies streamed, never held whole.
    let peak = rig.peak_rss_kib();
    assert!(peak < 200 * 1024, "qnet serve peaked at {peak} KiB");
    eprintln!(
        "qnet serve (stack + qhttp) peak RSS over 2 GiB moved: {} MiB",
        peak / 1024
    );
}

#[test]
fn a_thousand_concurrent_keep_alive_clients() {
    let rig = Rig::start("qh-1k", &basic_config(""));
    // 1,000 connections are opened first and held; then each sends five requests, one after
    // the other on its own connection, and checks every answer.
    let py = r#"
import asyncio, sys
HOST, PORT, N, ROUNDS = sys.argv[1], int(sys.argv[2]), 1000, 5
async def main():
    conns = await asyncio.gather(*[asyncio.open_connection(HOST, PORT) for _ in range(N)])
    async def client(i, r, w):
        ok = 0
        for k in range(ROUNDS):
            w.write(b"GET /c%d/%d HTTP/1.1\r\nHost: x\r\n\r\n" % (i, k))
            head = await r.readuntil(b"\r\n\r\n")
            length = int([l for l in head.split(b"\r\n") if l.lower().startswith(b"content-length")][0].split(b":")[1])
            body = await r.readexactly(length)
            ok += head.startswith(b"HTTP/1.1 200") and (b"path=/c%d/%d " % (i, k)) in body
        w.close()
        return ok
    oks = await asyncio.wait_for(asyncio.gather(*[client(i, r, w) for i, (r, w) in enumerate(conns)]), 120)
    print(sum(oks))
asyncio.run(main())
"#;
    let out = rig
        .ns
        .python_output(py, &[&STACK_IP.to_string(), &PROXY.to_string()]);
    assert_eq!(out, "5000");
    let metrics = rig.metrics();
    let counter = |name: &str| -> u64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} missing in:\n{metrics}"))
    };
    assert!(counter("qhttp_connections_total ") >= 1000, "{metrics}");
    assert!(
        metrics.contains("qhttp_requests_total{route=\"*/\",status=\"200\"} 5000"),
        "{metrics}"
    );
}

#[test]
fn wrk_keeps_connections_alive_without_errors() {
    require_env(&["wrk"]);
    let rig = Rig::start("qh-wrk", &basic_config(""));
    let out = rig.sh(&format!(
        "wrk -t1 -c50 -d2s --timeout 5s {}",
        rig.url("/hello")
    ));
    let requests: u64 = out
        .lines()
        .find_map(|l| l.trim().split_once(" requests in "))
        .and_then(|(n, _)| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no request count in:\n{out}"));
    assert!(requests >= 1000, "{out}");
    assert!(!out.contains("Socket errors"), "{out}");
    assert!(!out.contains("Non-2xx"), "{out}");
    // Keep-alive both ways: 50 client connections, and no more guest connections than that.
    let conns = rig.upstream_conns.load(Ordering::Relaxed);
    assert!(
        conns <= 50,
        "{conns} upstream connections for {requests} requests"
    );
}
