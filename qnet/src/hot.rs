//! Which bulk-receiving stream the TAP's next frame likely belongs to, so that its payload can
//! be read straight into that socket's storage (phy/rx.rs), and whether guessing pays.
//!
//! A frame is read before its stream is known, so the stack guesses: the stream that followed
//! the last frame's stream the last time (a sender's streams come round in a fairly steady
//! order), else that same stream, else the latest to receive in bulk. A wrong guess costs a
//! copy more than none (the frame is put back together), so guessing stops while it mostly
//! misses, but for an occasional probe that notices when it would pay again.

use smoltcp::iface::SocketHandle;

use crate::phy::rx::Endpoint;

/// A stream as its received frames carry it: (source, destination).
pub type Flow = (Endpoint, Endpoint);

/// Streams tracked at once.
const MAX_STREAMS: usize = 8;
/// Confidence in guessing, 0..=SCORE_MAX: a hit adds HIT, a miss takes MISS; below OPEN only
/// every PROBE_EVERY-th frame is guessed. A hit saves a copy and a miss costs one, so guessing
/// goes on while it hits at least half the time.
const SCORE_MAX: u32 = 256;
const HIT: u32 = 16;
const MISS: u32 = 16;
const OPEN: u32 = 128;
const PROBE_EVERY: u32 = 16;

struct Stream {
    flow: Flow,
    handle: SocketHandle,
    /// The stream whose frame followed this one's the last time.
    next: Option<Flow>,
}

/// The streams receiving in bulk lately (the latest first) and the guessing's record.
pub struct HotStreams {
    streams: Vec<Stream>,
    score: u32,
    unguessed: u32,
}

impl Default for HotStreams {
    fn default() -> Self {
        HotStreams {
            streams: Vec::new(),
            score: SCORE_MAX,
            unguessed: 0,
        }
    }
}

impl HotStreams {
    /// Socket `handle`, stream `flow`, just received in bulk.
    pub fn note_bulk(&mut self, flow: Flow, handle: SocketHandle) {
        let next = self
            .streams
            .iter()
            .find(|s| s.flow == flow)
            .and_then(|s| s.next);
        self.streams
            .retain(|s| s.handle != handle && s.flow != flow);
        self.streams.insert(0, Stream { flow, handle, next });
        self.streams.truncate(MAX_STREAMS);
    }

    /// The socket whose storage the next frame should be read into, after a frame of `last`
    /// (`None`: read it plainly).
    pub fn guess(&mut self, last: Option<Flow>) -> Option<SocketHandle> {
        if self.score < OPEN {
            self.unguessed += 1;
            if self.unguessed < PROBE_EVERY {
                return None;
            }
            self.unguessed = 0;
        }
        let find = |flow: Flow| self.streams.iter().find(|s| s.flow == flow);
        let after = last.and_then(find);
        after
            .and_then(|s| s.next.and_then(find))
            .or(after)
            .or(self.streams.first())
            .map(|s| s.handle)
    }

    /// A frame of `now` (a TCP stream, or `None`) was read after one of `prev`; `guessed`: it
    /// was read with a landing, `landed`: its payload was taken there.
    pub fn outcome(&mut self, prev: Option<Flow>, now: Option<Flow>, guessed: bool, landed: bool) {
        if let (Some(p), Some(n)) = (prev, now) {
            if let Some(s) = self.streams.iter_mut().find(|s| s.flow == p) {
                s.next = Some(n);
            }
        }
        if guessed {
            self.score = if landed {
                (self.score + HIT).min(SCORE_MAX)
            } else {
                self.score.saturating_sub(MISS)
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use smoltcp::iface::SocketSet;
    use smoltcp::socket::tcp;

    fn flow(port: u16) -> Flow {
        (([10, 0, 0, 1], port), ([10, 0, 0, 2], 5201))
    }

    /// Four real socket handles (the type has no public constructor).
    fn handles() -> (SocketSet<'static>, Vec<SocketHandle>) {
        let mut set = SocketSet::new(vec![]);
        let hs = (0..4)
            .map(|_| {
                set.add(tcp::Socket::new(
                    tcp::SocketBuffer::new(vec![0; 64]),
                    tcp::SocketBuffer::new(vec![0; 64]),
                ))
            })
            .collect();
        (set, hs)
    }

    #[test]
    fn one_stream_is_always_guessed() {
        let (_set, h) = handles();
        let mut hot = HotStreams::default();
        assert_eq!(hot.guess(None), None, "nothing receives in bulk yet");
        hot.note_bulk(flow(1), h[0]);
        for _ in 0..100 {
            assert_eq!(hot.guess(Some(flow(1))), Some(h[0]));
            hot.outcome(Some(flow(1)), Some(flow(1)), true, true);
        }
        assert_eq!(
            hot.guess(None),
            Some(h[0]),
            "the latest, with nothing else to go by"
        );
    }

    #[test]
    fn streams_in_turn_are_guessed_by_who_came_next() {
        let (_set, h) = handles();
        let mut hot = HotStreams::default();
        for (i, &handle) in h.iter().enumerate() {
            hot.note_bulk(flow(i as u16), handle);
        }
        // One round teaches the order (and the turn from the last back to the first, once):
        // from then on every guess is right.
        let mut last = None;
        let mut hits = 0;
        for round in 0..10 {
            for i in 0..4u16 {
                let guess = hot.guess(last);
                let landed = guess == Some(h[i as usize]);
                hits += u32::from(landed && round > 0);
                hot.outcome(last, Some(flow(i)), guess.is_some(), landed);
                last = Some(flow(i));
            }
        }
        assert_eq!(hits, 35);
    }

    #[test]
    fn guessing_stops_while_it_misses_and_probes_until_it_pays_again() {
        let (_set, h) = handles();
        let mut hot = HotStreams::default();
        hot.note_bulk(flow(1), h[0]);
        // Frames of a stream it does not know: every guess misses.
        let mut guessed = 0;
        for _ in 0..200 {
            let g = hot.guess(Some(flow(9)));
            guessed += u32::from(g.is_some());
            hot.outcome(Some(flow(9)), Some(flow(9)), g.is_some(), false);
        }
        assert!(guessed < 30, "guessed {guessed} of 200 misses");
        // Its own frames again: a probe lands, and guessing resumes.
        let mut first_hit = None;
        for n in 0..200 {
            let g = hot.guess(Some(flow(1)));
            hot.outcome(Some(flow(1)), Some(flow(1)), g.is_some(), g.is_some());
            if g.is_some() && first_hit.is_none() {
                first_hit = Some(n);
            }
        }
        assert!(first_hit.is_some_and(|n| n < PROBE_EVERY as usize));
        assert_eq!(hot.guess(Some(flow(1))), Some(h[0]));
    }
}
