//! qnet's async sockets (`qnet_client::nonblocking`) on a tokio runtime, against kernel peers:
//! an async echo server serving many concurrent kernel clients at once, an async client moving
//! data both ways through a kernel server, and errors surfacing as they do for std sockets.

use std::io;
use std::time::Duration;

use qnet_client::{AsyncTcpListener, AsyncTcpStream};
use quark_tests::*;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("tokio runtime")
}

async fn echo(mut s: AsyncTcpStream) -> io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = s.read(&mut buf).await?;
        if n == 0 {
            return s.shutdown().await;
        }
        s.write_all(&buf[..n]).await?;
    }
}

#[test]
fn one_task_per_connection_serves_300_concurrent_kernel_clients() {
    require_env(&["python3"]);
    let st = TestStack::start("aecho");
    let client = st.client();
    let listener = AsyncTcpListener::bind(&client, st.addr(7007), 512).unwrap();
    // The server's runtime runs on a thread of its own while the kernel clients run here.
    let server = std::thread::spawn(move || {
        runtime().block_on(async move {
            loop {
                let (s, _) = listener.accept().await?;
                tokio::spawn(echo(s));
            }
            #[allow(unreachable_code)]
            io::Result::Ok(())
        })
    });
    // Every client connects before any sends, so all 300 are open at once; each then echoes
    // 64 KiB, which takes several ring round trips per connection.
    let py = r#"
import socket, sys, threading
n, addr = int(sys.argv[1]), (sys.argv[2], 7007)
socks = [socket.create_connection(addr, timeout=20) for _ in range(n)]
ok = [False] * n
def run(i):
    s = socks[i]
    data = bytes([i % 251]) * 65536
    s.sendall(data)
    s.shutdown(socket.SHUT_WR)
    got = b""
    while True:
        d = s.recv(65536)
        if not d: break
        got += d
    ok[i] = got == data
ts = [threading.Thread(target=run, args=(i,)) for i in range(n)]
for t in ts: t.start()
for t in ts: t.join()
print(sum(ok))
"#;
    let served = st.ns.python_output(py, &["300", &STACK_IP.to_string()]);
    assert_eq!(served, "300");
    assert!(
        !server.is_finished(),
        "the accept loop ended: {:?}",
        server.join()
    );
}

#[test]
fn async_client_moves_64_mib_each_way_through_a_kernel_server() {
    require_env(&["python3"]);
    let st = TestStack::start("aclient");
    // A kernel server that hashes what it receives, then sends the same amount back.
    let py = r#"
import socket, hashlib, sys
l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.bind(("0.0.0.0", 9009)); l.listen(1)
c, _ = l.accept()
h, n = hashlib.sha256(), 0
while True:
    d = c.recv(1 << 20)
    if not d: break
    h.update(d); n += len(d)
block = bytes(range(256)) * 4096
sent = 0
while sent < n:
    k = min(len(block), n - sent)
    c.sendall(block[:k]); sent += k
c.close()
print(h.hexdigest())
"#;
    let server = st.ns.python(py, &[]);
    wait_listening(&st.ns, 9009);
    let client = st.client();
    const LEN: usize = 64 << 20;
    let (sent_sha, got) = runtime().block_on(async {
        let mut s = AsyncTcpStream::connect(&client, st.peer(9009))
            .await
            .unwrap();
        let mut pattern = Pattern::new(9);
        let mut hash = Sha256::new();
        let mut buf = vec![0u8; 256 * 1024];
        let mut left = LEN;
        while left > 0 {
            let k = left.min(buf.len());
            pattern.fill(&mut buf[..k]);
            hash.update(&buf[..k]);
            s.write_all(&buf[..k]).await.unwrap();
            left -= k;
        }
        s.shutdown().await.unwrap();
        let mut got = Vec::with_capacity(LEN);
        s.read_to_end(&mut got).await.unwrap();
        (format!("{:x}", hash.finalize()), got)
    });
    let out = server.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), sent_sha);
    assert_eq!(got.len(), LEN);
    let block: Vec<u8> = (0..=255u8).cycle().take(256 * 4096).collect();
    assert!(got.chunks(block.len()).all(|c| c == &block[..c.len()]));
}

#[test]
fn refused_and_timed_out_connects_are_errors_not_hangs() {
    require_env(&[]);
    let st = TestStack::start("aerr");
    let client = st.client();
    runtime().block_on(async {
        // The kernel peer answers RST: nothing listens there.
        let e = AsyncTcpStream::connect(&client, st.peer(1)).await.err();
        assert_eq!(e.map(|e| e.kind()), Some(io::ErrorKind::ConnectionRefused));
        // A task reading a stream whose peer closes is woken with end of stream.
        let listener = AsyncTcpListener::bind(&client, st.addr(7100), 8).unwrap();
        let (connected, accepted) = tokio::join!(
            AsyncTcpStream::connect(&client, st.addr(7100)),
            listener.accept()
        );
        let (mut server_side, peer) = accepted.unwrap();
        let client_side = connected.unwrap();
        assert_eq!(peer, client_side.local_addr().unwrap());
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 16];
            server_side.read(&mut buf).await
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(client_side);
        let r = tokio::time::timeout(Duration::from_secs(5), reader).await;
        assert_eq!(r.expect("the read must end").unwrap().unwrap(), 0);
    });
}
