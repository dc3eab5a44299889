//! Bodies streamed through the proxy, frame by frame (never buffered whole): a request body
//! that stops at the body limit, and a response body that reports its size when it ends.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Every body the proxy sends, either way.
pub type ProxyBody = BoxBody<Bytes, BoxError>;

/// A whole small body (error pages, metrics).
pub fn full(text: impl Into<Bytes>) -> ProxyBody {
    Full::new(text.into()).map_err(|e| match e {}).boxed()
}

#[derive(Debug, thiserror::Error)]
#[error("request body over the {limit}-byte limit")]
pub struct TooLarge {
    pub limit: u64,
}

/// A request body that fails once more than `limit` bytes have passed, and records that it did
/// (so the proxy answers 413 rather than 502 for the upstream exchange it broke).
pub struct Limited<B> {
    inner: B,
    seen: u64,
    limit: Option<u64>,
    exceeded: Arc<AtomicBool>,
}

impl<B> Limited<B> {
    pub fn new(inner: B, limit: Option<u64>, exceeded: Arc<AtomicBool>) -> Self {
        Limited {
            inner,
            seen: 0,
            limit,
            exceeded,
        }
    }
}

impl<B> Body for Limited<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let frame = match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(f))) => f,
            Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => return Poll::Ready(None),
            Poll::Pending => return Poll::Pending,
        };
        if let Some(data) = frame.data_ref() {
            this.seen += data.len() as u64;
            if let Some(limit) = this.limit.filter(|l| this.seen > *l) {
                this.exceeded.store(true, Ordering::Release);
                return Poll::Ready(Some(Err(Box::new(TooLarge { limit }))));
            }
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Called once when a response body is done: with the bytes sent and whether it reached its
/// end (false when the client went away or the upstream broke off).
pub type OnDone = Box<dyn FnOnce(u64, bool) + Send + Sync>;

/// A response body that counts what it passes and calls [`OnDone`] when finished or dropped,
/// so the access log line carries the real size and the time to the last byte.
pub struct Counted<B> {
    inner: B,
    bytes: u64,
    ended: bool,
    on_done: Option<OnDone>,
}

impl<B> Counted<B> {
    pub fn new(inner: B, on_done: OnDone) -> Self {
        Counted {
            inner,
            bytes: 0,
            ended: false,
            on_done: Some(on_done),
        }
    }

    fn finish(&mut self) {
        if let Some(f) = self.on_done.take() {
            f(self.bytes, self.ended);
        }
    }
}

impl<B> Body for Counted<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_frame(cx);
        match &r {
            Poll::Ready(Some(Ok(f))) => {
                if let Some(d) = f.data_ref() {
                    this.bytes += d.len() as u64;
                }
                if this.inner.is_end_stream() {
                    this.ended = true;
                    this.finish();
                }
            }
            Poll::Ready(None) => {
                this.ended = true;
                this.finish();
            }
            Poll::Ready(Some(Err(_))) => this.finish(),
            Poll::Pending => {}
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B> Drop for Counted<B> {
    fn drop(&mut self) {
        self.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn limited_passes_up_to_the_limit_and_fails_past_it() {
        let flag = Arc::new(AtomicBool::new(false));
        let ok = Limited::new(
            Full::new(Bytes::from(vec![0u8; 100])),
            Some(100),
            flag.clone(),
        );
        assert_eq!(block_on(ok.collect()).unwrap().to_bytes().len(), 100);
        assert!(!flag.load(Ordering::Acquire));
        let over = Limited::new(
            Full::new(Bytes::from(vec![0u8; 101])),
            Some(100),
            flag.clone(),
        );
        let err = block_on(over.collect()).err().unwrap();
        assert!(err.to_string().contains("100-byte limit"), "{err}");
        assert!(flag.load(Ordering::Acquire));
    }

    #[test]
    fn counted_reports_bytes_and_completion_once() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let body = Counted::new(
            Full::new(Bytes::from_static(b"hello")),
            Box::new(move |n, done| s.lock().unwrap().push((n, done))),
        );
        block_on(body.collect()).unwrap();
        assert_eq!(*seen.lock().unwrap(), vec![(5, true)]);

        let s = seen.clone();
        let body = Counted::new(
            Full::new(Bytes::from_static(b"never read")),
            Box::new(move |n, done| s.lock().unwrap().push((n, done))),
        );
        drop(body);
        assert_eq!(seen.lock().unwrap()[1], (0, false));
    }
}
