//! The measured workloads, generic over any byte stream (a kernel socket or a qnet one).

use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

/// Writes as fast as possible for `duration`, then closes the write side (by dropping).
pub fn bulk_send<W: Write>(mut w: W, duration: Duration) -> io::Result<u64> {
    let buf = vec![0xa5u8; 256 << 10];
    let start = Instant::now();
    let mut sent = 0u64;
    while start.elapsed() < duration {
        w.write_all(&buf)?;
        sent += buf.len() as u64;
    }
    Ok(sent)
}

/// Reads until end of stream; returns bytes and the time from the first byte to the end.
pub fn bulk_recv<R: Read>(mut r: R) -> io::Result<(u64, Duration)> {
    let mut buf = vec![0u8; 256 << 10];
    let mut total = 0u64;
    let mut start = None;
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            break;
        }
        start.get_or_insert_with(Instant::now);
        total += n as u64;
    }
    Ok((total, start.map_or(Duration::ZERO, |s| s.elapsed())))
}

/// Echoes single bytes until end of stream.
pub fn echo<S: Read + Write>(mut s: S) -> io::Result<()> {
    let mut b = [0u8; 1];
    loop {
        if s.read(&mut b)? == 0 {
            return Ok(());
        }
        s.write_all(&b)?;
    }
}

/// 1-byte request/response for `duration`; returns every round trip.
pub fn ping_pong<S: Read + Write>(mut s: S, duration: Duration) -> io::Result<Vec<Duration>> {
    let mut rtts = Vec::with_capacity(100_000);
    let mut b = [7u8; 1];
    let start = Instant::now();
    while start.elapsed() < duration {
        let t = Instant::now();
        s.write_all(&b)?;
        s.read_exact(&mut b)?;
        rtts.push(t.elapsed());
    }
    Ok(rtts)
}

/// The `p`-th percentile (0-100) of samples, in microseconds.
pub fn percentile_us(samples: &mut [Duration], p: f64) -> f64 {
    if samples.is_empty() {
        return f64::NAN;
    }
    samples.sort_unstable();
    let idx = ((p / 100.0) * (samples.len() - 1) as f64).round() as usize;
    samples[idx.min(samples.len() - 1)].as_secs_f64() * 1e6
}

/// The order `n` paths or runtimes take in round `round`: each goes first equally often, so
/// drift over a run falls on all of them alike (A B C, B C A, C A B, ...).
pub fn rotation(n: usize, round: usize) -> impl Iterator<Item = usize> {
    (0..n).map(move |k| (k + round) % n)
}

/// The median of a few values (one per round).
pub fn median(values: &mut [f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(|a, b| a.total_cmp(b));
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_and_medians() {
        let mut s: Vec<Duration> = (1..=100).map(Duration::from_micros).collect();
        assert_eq!(percentile_us(&mut s, 50.0).round(), 51.0);
        assert_eq!(percentile_us(&mut s, 99.0).round(), 99.0);
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&mut []).is_nan());
        assert_eq!(rotation(3, 4).collect::<Vec<_>>(), [1, 2, 0]);
    }

    #[test]
    fn workloads_run_over_kernel_loopback() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let t = std::thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            bulk_recv(s).unwrap()
        });
        let c = std::net::TcpStream::connect(addr).unwrap();
        let sent = bulk_send(c, Duration::from_millis(50)).unwrap();
        let (got, _) = t.join().unwrap();
        assert_eq!(sent, got);
    }
}
