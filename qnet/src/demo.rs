//! Small servers that run on the stack through the ring, for a user to see it work: a TCP echo
//! and an HTTP "hello" (what `qnet serve` starts), and a UDP echo.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::thread;

use qnet_client::{AsyncTcpListener, AsyncTcpStream, Client, TcpListener, TcpStream, UdpSocket};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Echoes every TCP connection on `port` until the stack goes away.
pub fn tcp_echo(client: Client, port: u16) -> std::io::Result<thread::JoinHandle<()>> {
    let listener = TcpListener::bind(&client, SocketAddr::from(([0, 0, 0, 0], port)), 1024)?;
    Ok(thread::spawn(move || {
        while let Ok((stream, _)) = listener.accept() {
            thread::spawn(move || echo(stream));
        }
    }))
}

fn echo(mut s: TcpStream) {
    let mut buf = vec![0u8; 256 << 10];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if s.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
        }
    }
}

/// Answers every HTTP request on `port` with a short greeting. One thread serves every
/// connection as a task of a tokio runtime on qnet's async sockets, so it stands for an
/// event-driven server (nginx-like) in benchmarks, not a thread per connection.
pub fn http_hello(client: Client, port: u16) -> std::io::Result<thread::JoinHandle<()>> {
    let listener = AsyncTcpListener::bind(&client, SocketAddr::from(([0, 0, 0, 0], port)), 1024)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?;
    Ok(thread::spawn(move || {
        rt.block_on(async move {
            // Ok(false): another server of this client already runs the reactor.
            let _ = client.spawn_reactor_task();
            while let Ok((stream, peer)) = listener.accept().await {
                tokio::spawn(http_conn(stream, peer));
            }
        })
    }))
}

async fn http_conn(mut s: AsyncTcpStream, peer: SocketAddr) {
    let _ = s.set_nodelay(true);
    let mut req = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        // Serve each request once its header is complete; keep the connection alive.
        while let Some(end) = req.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&req[..end]).to_ascii_lowercase();
            req.drain(..end + 4);
            let close = head.contains("connection: close");
            let body = format!("hello from qnet, {peer}\n");
            let resp = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nServer: qnet\r\n{}\r\n{body}",
                body.len(),
                if close { "Connection: close\r\n" } else { "" }
            );
            if s.write_all(resp.as_bytes()).await.is_err() || close {
                let _ = s.shutdown().await;
                return;
            }
        }
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => req.extend_from_slice(&buf[..n]),
        }
        if req.len() > 64 << 10 {
            let _ = s.write_all(b"HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").await;
            return;
        }
    }
}

/// Echoes every UDP datagram on `port` back to its sender.
pub fn udp_echo(client: Client, port: u16) -> std::io::Result<thread::JoinHandle<()>> {
    let sock = UdpSocket::bind(&client, SocketAddr::from(([0, 0, 0, 0], port)))?;
    Ok(thread::spawn(move || {
        let mut buf = vec![0u8; 65536];
        while let Ok((n, from)) = sock.recv_from(&mut buf) {
            if sock.send_to(&buf[..n], from).is_err() {
                return;
            }
        }
    }))
}
