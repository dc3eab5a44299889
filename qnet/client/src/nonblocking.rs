//! Async qnet sockets for tokio: [`AsyncTcpStream`] (tokio's `AsyncRead`/`AsyncWrite`) and
//! [`AsyncTcpListener`].
//!
//! Data and readiness never block a task: a socket that would block registers the task's waker
//! for its slot and returns `Pending`; a reactor per [`Client`] (a task of the runtime after
//! [`Client::spawn_reactor_task`], else a thread) sleeps on the ring and wakes the task when
//! the stack publishes an event for the slot. Control operations (socket,
//! connect's start, accept, shutdown, close) are short calls into the stack that complete in
//! its next pass (microseconds; never a network wait), so they run inline.

use std::future::poll_fn;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};

use qnet_ring::errno::EAGAIN;
use qnet_ring::READY_CONNECTED;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::client::{Client, Direction};
use crate::socket::{Interest, TcpListener, TcpStream};

/// Runs `op`; if it would block, registers the task and tries once more so an event drained
/// between the two is not lost.
fn poll_op<T>(
    cx: &mut Context<'_>,
    client: &Client,
    slot: u32,
    dir: Direction,
    mut op: impl FnMut() -> io::Result<T>,
) -> Poll<io::Result<T>> {
    match op() {
        Err(e) if would_block(&e) => {}
        r => return Poll::Ready(r),
    }
    client.register_waker(slot, dir, cx.waker());
    match op() {
        Err(e) if would_block(&e) => Poll::Pending,
        r => Poll::Ready(r),
    }
}

fn would_block(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock || e.raw_os_error() == Some(EAGAIN)
}

/// A TCP connection through qnet, for async code.
pub struct AsyncTcpStream {
    inner: TcpStream,
}

impl AsyncTcpStream {
    /// Connects to `addr` without blocking the runtime while the handshake runs.
    pub async fn connect(client: &Client, addr: SocketAddr) -> io::Result<AsyncTcpStream> {
        let stream = AsyncTcpStream::from_std(TcpStream::start_connect(client, addr)?)?;
        poll_fn(|cx| stream.poll_ready(cx, Direction::Write, READY_CONNECTED)).await?;
        if let Some(e) = stream.inner.take_error()? {
            return Err(e);
        }
        Ok(stream)
    }

    /// Wraps a connected stream (made non-blocking).
    pub fn from_std(inner: TcpStream) -> io::Result<AsyncTcpStream> {
        inner.set_nonblocking(true)?;
        Ok(AsyncTcpStream { inner })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.inner.peer_addr()
    }

    pub fn set_nodelay(&self, on: bool) -> io::Result<()> {
        self.inner.set_nodelay(on)
    }

    /// Ready once any of the `READY_*` `bits` is set on the slot.
    fn poll_ready(&self, cx: &mut Context<'_>, dir: Direction, bits: u32) -> Poll<io::Result<()>> {
        let client = self.inner.client();
        poll_op(cx, client, self.inner.slot(), dir, || {
            if self.inner.readiness() & bits != 0 {
                Ok(())
            } else {
                Err(io::ErrorKind::WouldBlock.into())
            }
        })
    }
}

impl AsyncRead for AsyncTcpStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let stream = &self.get_mut().inner;
        let dst = buf.initialize_unfilled();
        match poll_op(cx, stream.client(), stream.slot(), Direction::Read, || {
            (&*stream).read(dst)
        }) {
            Poll::Ready(Ok(n)) => {
                buf.advance(n);
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncWrite for AsyncTcpStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let stream = &self.inner;
        poll_op(cx, stream.client(), stream.slot(), Direction::Write, || {
            (&*stream).write(buf)
        })
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Bytes in the transmit ring are the stack's to send; there is nothing to flush.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.inner.shutdown(Shutdown::Write) {
            // Already shut or reset by the peer: the write side is closed either way.
            Err(e) if e.kind() == io::ErrorKind::NotConnected => Poll::Ready(Ok(())),
            r => Poll::Ready(r),
        }
    }
}

/// A listening TCP socket through qnet, for async code.
pub struct AsyncTcpListener {
    inner: TcpListener,
}

impl AsyncTcpListener {
    /// Binds `addr` and listens with room for `backlog` connections not yet accepted.
    pub fn bind(client: &Client, addr: SocketAddr, backlog: u32) -> io::Result<AsyncTcpListener> {
        let inner = TcpListener::bind(client, addr, backlog)?;
        inner.set_nonblocking(true)?;
        Ok(AsyncTcpListener { inner })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    pub async fn accept(&self) -> io::Result<(AsyncTcpStream, SocketAddr)> {
        poll_fn(|cx| self.poll_accept(cx)).await
    }

    pub fn poll_accept(
        &self,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<(AsyncTcpStream, SocketAddr)>> {
        let client = self.inner.client();
        let r = poll_op(cx, client, self.inner.slot(), Direction::Read, || {
            // Skip the round trip to the stack while the accept queue is empty.
            if self.inner.readiness() & Interest::READABLE == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            self.inner.accept()
        });
        match r {
            Poll::Ready(Ok((s, peer))) => {
                Poll::Ready(AsyncTcpStream::from_std(s).map(|s| (s, peer)))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// Spawns the reactor as a task of the current tokio runtime, sleeping on the client wake
/// eventfd (see [`Client::spawn_reactor_task`]).
pub(crate) fn spawn_reactor_task(
    weak: std::sync::Weak<crate::client::Inner>,
    wake_fd: &std::sync::Arc<std::os::fd::OwnedFd>,
) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    use tokio::io::unix::AsyncFd;

    let handle = tokio::runtime::Handle::try_current().map_err(io::Error::other)?;
    // SAFETY: the eventfd is owned by the Arc inside WakeFd, so it stays open, and refers to
    // the same file, for as long as the AsyncFd holding it exists.
    let fd = unsafe { AsyncFd::register(WakeFd(wake_fd.clone())) }.map_err(io::Error::from)?;
    handle.spawn(async move {
        loop {
            let Some(client) = Client::from_weak(&weak) else {
                return;
            };
            match client.reactor_turn() {
                Err(_) => return,
                Ok(false) => {
                    drop(client);
                    tokio::task::yield_now().await;
                    continue;
                }
                Ok(true) => drop(client),
            }
            let Ok(mut ready) = fd.readable().await else {
                return;
            };
            let mut count = [0u8; 8];
            // SAFETY: reads 8 bytes into a live buffer from a non-blocking eventfd.
            let n = unsafe {
                libc::read(
                    fd.get_ref().0.as_raw_fd(),
                    count.as_mut_ptr().cast(),
                    count.len(),
                )
            };
            if n < 0 {
                ready.clear_ready();
            }
        }
    });
    Ok(())
}

/// The wake eventfd as `AsyncFd` wants it.
struct WakeFd(std::sync::Arc<std::os::fd::OwnedFd>);

impl std::os::fd::AsRawFd for WakeFd {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.0.as_raw_fd()
    }
}
