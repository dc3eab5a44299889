//! [`Client`]: one attached ring, shared by every socket of the process that made it.
//!
//! Operations go through the submission queue under a lock and wait for their completion;
//! data never takes the lock: each socket moves bytes through its own slot's byte rings. A
//! thread that must wait spins briefly, then sleeps on the ring's wake futex.

use std::collections::HashMap;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::{AcqRel, Acquire, Relaxed, Release, SeqCst};
use std::sync::{Arc, Mutex, MutexGuard, Once, Weak};
use std::task::Waker;
use std::time::{Duration, Instant};

use qnet_ring::errno::*;
use qnet_ring::*;

use crate::attach::{Hello, Welcome};
use crate::sys::{eventfd_signal, futex_wait, peer_closed, recv_with_fds, Mapping};

/// How many times a waiting thread checks before it sleeps (about 20 µs here): long enough to
/// catch a reply from a busy-polling stack, short against the wake-up cost.
const SPIN_CHECKS: u32 = 1000;
/// A sleeping thread re-checks at least this often (a safety net, not a poll interval).
const MAX_SLEEP: Duration = Duration::from_millis(200);
/// The reactor's spin before it sleeps: short, since it only forwards wake-ups and a spinning
/// reactor would take a core from the tasks it serves.
const REACTOR_SPIN_CHECKS: u32 = 64;

/// Which half of a socket a task waits on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Direction {
    Read,
    Write,
}

/// Tasks waiting on a slot, woken when an event for the slot is drained.
#[derive(Default)]
struct SlotWakers {
    read: Option<Waker>,
    write: Option<Waker>,
}

struct SqState {
    tail: u32,
    next_user_data: u64,
}

struct CqState {
    head: u32,
    done: HashMap<u64, Cqe>,
}

pub(crate) struct Inner {
    // Declared before `_mapping`: dropped first.
    view: RegionView,
    _mapping: Mapping,
    /// The region's memfd, for a VMM that maps a ring into its guest on its own.
    memfd: OwnedFd,
    doorbell: OwnedFd,
    /// The stack writes it when `client_wake_armed` is set: an event loop's wake-up.
    wake_fd: Arc<OwnedFd>,
    /// The attach socket: the stack holds its end for as long as it serves this client.
    stream: UnixStream,
    /// Set when the stack's end of `stream` closed without the stack saying so (its process
    /// died): every wait then fails as if the stack had closed this client.
    stack_gone: AtomicBool,
    sq: Mutex<SqState>,
    cq: Mutex<CqState>,
    ev_head: Mutex<u32>,
    /// Set by the owner to make every wait give up with EINTR (the owner is stopping).
    cancel: Arc<AtomicBool>,
    /// Async tasks waiting on slots (see `crate::nonblocking`).
    wakers: Mutex<HashMap<u32, SlotWakers>>,
    /// Set when a drain woke a task; the reactor's wait ends on it.
    dispatched: AtomicBool,
    reactor: Once,
}

/// How full a ring's queues are (entries not yet taken by the other side).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Occupancy {
    pub submissions: u32,
    pub completions: u32,
    pub events: u32,
    /// Entries the submission queue holds.
    pub capacity: u32,
}

/// A handle on an attached ring; cheap to clone.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a ring lock leaves nothing half-written that matters more than
    // losing the ring; carry on with the data as it is.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub(crate) fn errno(e: i32) -> io::Error {
    io::Error::from_raw_os_error(e)
}

impl Client {
    /// Attaches to the stack listening on the Unix socket at `path`.
    pub fn connect(path: impl AsRef<Path>) -> io::Result<Client> {
        Self::connect_cancellable(path, Arc::new(AtomicBool::new(false)))
    }

    /// Attaches like [`Client::connect`]; once `cancel` is set, every blocked or later wait
    /// fails with EINTR within 200 ms, so an owner can stop threads parked in socket calls.
    pub fn connect_cancellable(
        path: impl AsRef<Path>,
        cancel: Arc<AtomicBool>,
    ) -> io::Result<Client> {
        let path = path.as_ref();
        let stream = UnixStream::connect(path).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("connecting to qnet at {}: {e}", path.display()),
            )
        })?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        (&stream).write_all(&Hello::current().encode())?;
        let mut buf = [0u8; Welcome::LEN];
        let mut fds = recv_with_fds(&stream, &mut buf, 3)?;
        let welcome = Welcome::decode(&buf);
        if welcome.magic != MAGIC || welcome.version != VERSION || fds.len() != 3 {
            return Err(io::Error::other(format!(
                "qnet at {} speaks ring version {}, this client {VERSION}",
                path.display(),
                welcome.version
            )));
        }
        let wake_fd = fds
            .pop()
            .ok_or_else(|| io::Error::other("no wake eventfd"))?;
        let doorbell = fds.pop().ok_or_else(|| io::Error::other("no doorbell"))?;
        let memfd = fds.pop().ok_or_else(|| io::Error::other("no ring"))?;
        let size = usize::try_from(welcome.region_size).map_err(io::Error::other)?;
        let mapping = Mapping::map_shared(&memfd, size)?;
        // SAFETY: the mapping is page aligned, `size` bytes long and lives in Inner beside the
        // view, which is dropped first; the header page is mapped (validate checks the size).
        let view = unsafe {
            let geometry = RegionView::read_geometry(mapping.as_ptr());
            RegionView::new(mapping.as_ptr(), mapping.len(), geometry)
        }
        .map_err(|e| io::Error::other(format!("qnet ring: {e}")))?;
        stream.set_read_timeout(None)?;
        Ok(Client {
            inner: Arc::new(Inner {
                view,
                _mapping: mapping,
                memfd,
                doorbell,
                wake_fd: Arc::new(wake_fd),
                stream,
                stack_gone: AtomicBool::new(false),
                sq: Mutex::new(SqState {
                    tail: 0,
                    next_user_data: 1,
                }),
                cq: Mutex::new(CqState {
                    head: 0,
                    done: HashMap::new(),
                }),
                ev_head: Mutex::new(0),
                cancel,
                wakers: Mutex::new(HashMap::new()),
                dispatched: AtomicBool::new(false),
                reactor: Once::new(),
            }),
        })
    }

    pub(crate) fn from_weak(weak: &Weak<Inner>) -> Option<Client> {
        weak.upgrade().map(|inner| Client { inner })
    }

    /// The bytes of each socket's send ring (`SO_SNDBUF`).
    pub fn send_buffer_size(&self) -> u32 {
        self.view().geometry().tx_buf_size
    }

    /// The bytes of each socket's receive ring (`SO_RCVBUF`).
    pub fn recv_buffer_size(&self) -> u32 {
        self.view().geometry().rx_buf_size
    }

    /// The shared region as this process maps it (start, bytes) and its geometry: for a
    /// VMM that maps parts of it into its guest (qvisor's stub reads). Valid while any clone
    /// of this client lives.
    pub fn region(&self) -> (*mut u8, usize, Geometry) {
        let v = self.view();
        (v.base(), v.len(), *v.geometry())
    }

    /// The region's memfd (see [`Client::region`]): to map one slot's ring elsewhere.
    pub fn region_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.inner.memfd.as_fd()
    }

    pub(crate) fn view(&self) -> &RegionView {
        &self.inner.view
    }

    fn closed(&self) -> bool {
        self.view().stack_flags().load(Acquire) & STACK_CLOSED != 0
            || self.inner.stack_gone.load(Relaxed)
    }

    fn ring_doorbell_if_asleep(&self) {
        if self.view().stack_flags().load(SeqCst) & STACK_NEED_WAKEUP != 0 {
            eventfd_signal(self.inner.doorbell.as_raw_fd());
        }
    }

    /// Publishes one entry; returns its user_data.
    fn push(&self, mut sqe: Sqe) -> io::Result<u64> {
        let view = self.view();
        let mut sq = lock(&self.inner.sq);
        let entries = view.geometry().sq_entries;
        while sq.tail.wrapping_sub(view.sq_head().load(Acquire)) >= entries {
            if self.closed() {
                return Err(errno(ECONNABORTED));
            }
            if self.inner.cancel.load(Relaxed) {
                return Err(errno(EINTR));
            }
            self.ring_doorbell_if_asleep();
            std::thread::yield_now();
        }
        sqe.user_data = sq.next_user_data;
        sq.next_user_data += 1;
        view.write_sqe(sq.tail, &sqe);
        sq.tail = sq.tail.wrapping_add(1);
        view.sq_tail().store(sq.tail, SeqCst);
        drop(sq);
        self.ring_doorbell_if_asleep();
        Ok(sqe.user_data)
    }

    /// Sends a notification that wants no completion.
    pub(crate) fn notify(&self, opcode: u8, slot: u32) {
        let _ = self.push(Sqe {
            opcode,
            slot,
            flags: SQE_F_NO_CQE,
            ..Default::default()
        });
    }

    /// Runs one operation and returns its completion (`Err` for a negative result).
    pub(crate) fn call(&self, sqe: Sqe) -> io::Result<Cqe> {
        let ud = self.push(sqe)?;
        let mut found = None;
        self.wait_until(None, || {
            found = lock(&self.inner.cq).done.remove(&ud);
            found.is_some()
        })?;
        let c = found.ok_or_else(|| errno(ECONNABORTED))?;
        if c.result < 0 {
            Err(errno(-c.result))
        } else {
            Ok(c)
        }
    }

    /// Moves completions into the lookup table and retires events.
    fn drain(&self) {
        let view = self.view();
        // Cheap check first: waiting threads call this in a spin loop.
        if view.cq_tail().load(Acquire) == view.cq_head().load(Acquire)
            && view.ev_tail().load(Acquire) == view.ev_head().load(Acquire)
        {
            return;
        }
        {
            let mut cq = lock(&self.inner.cq);
            let tail = view.cq_tail().load(Acquire);
            while cq.head != tail {
                let c = view.read_cqe(cq.head);
                cq.done.insert(c.user_data, c);
                cq.head = cq.head.wrapping_add(1);
            }
            view.cq_head().store(cq.head, Release);
        }
        let mut ev = lock(&self.inner.ev_head);
        let tail = view.ev_tail().load(Acquire);
        let mut slots = Vec::new();
        while *ev != tail {
            let slot = view.read_event(*ev);
            if let Some(w) = view.slot_stack(slot) {
                w.event_queued.store(0, SeqCst);
            }
            slots.push(slot);
            *ev = ev.wrapping_add(1);
        }
        view.ev_head().store(*ev, Release);
        drop(ev);
        self.wake_tasks(&slots);
    }

    /// Wakes the async tasks waiting on `slots` (outside every ring lock: a woken task may run
    /// on this thread's runtime at once).
    fn wake_tasks(&self, slots: &[u32]) {
        let mut woken = Vec::new();
        {
            let mut wakers = lock(&self.inner.wakers);
            if wakers.is_empty() {
                return;
            }
            for slot in slots {
                if let Some(w) = wakers.get_mut(slot) {
                    woken.extend(w.read.take());
                    woken.extend(w.write.take());
                }
            }
        }
        if !woken.is_empty() {
            self.inner.dispatched.store(true, Release);
        }
        for w in woken {
            w.wake();
        }
    }

    /// Wakes every waiting task (the client is cancelled or closed: each sees the error itself).
    fn wake_all_tasks(&self) {
        let all: Vec<u32> = lock(&self.inner.wakers).keys().copied().collect();
        self.wake_tasks(&all);
    }

    /// Wakes `waker` at the next event for `slot` (the caller re-checks readiness after this,
    /// so an event drained in between is not lost). Starts the reactor on first use.
    pub(crate) fn register_waker(&self, slot: u32, dir: Direction, waker: &Waker) {
        self.start_reactor();
        let mut wakers = lock(&self.inner.wakers);
        let entry = wakers.entry(slot).or_default();
        let place = match dir {
            Direction::Read => &mut entry.read,
            Direction::Write => &mut entry.write,
        };
        match place {
            Some(w) if w.will_wake(waker) => {}
            _ => *place = Some(waker.clone()),
        }
    }

    /// Drops the wakers of a slot being closed.
    pub(crate) fn forget_wakers(&self, slot: u32) {
        lock(&self.inner.wakers).remove(&slot);
    }

    /// Runs this client's reactor (what wakes async tasks when the stack publishes events for
    /// their slots) as a task of the current tokio runtime, sleeping on the client wake
    /// eventfd in the runtime's own epoll: no thread and no extra wake-up in between. The
    /// runtime must have its I/O driver (`enable_io`). Without this call the first async wait
    /// starts a reactor thread that sleeps on the ring's futex. Returns false if a reactor
    /// already runs.
    pub fn spawn_reactor_task(&self) -> io::Result<bool> {
        let mut result = Ok(false);
        self.inner.reactor.call_once(|| {
            let weak: Weak<Inner> = Arc::downgrade(&self.inner);
            result =
                crate::nonblocking::spawn_reactor_task(weak, &self.inner.wake_fd).map(|_| true);
        });
        result
    }

    /// Starts the reactor thread unless a reactor runs already. The thread holds the ring only
    /// weakly and ends when the last handle is dropped or the client is cancelled.
    fn start_reactor(&self) {
        self.inner.reactor.call_once(|| {
            let weak: Weak<Inner> = Arc::downgrade(&self.inner);
            let spawned = std::thread::Builder::new()
                .name("qnet-reactor".into())
                .spawn(move || reactor(weak));
            if let Err(e) = spawned {
                tracing::error!("qnet-client: cannot start the reactor thread: {e}");
            }
        });
    }

    /// One turn of an event-loop reactor: wakes tasks for events already published, then arms
    /// the wake eventfd and looks once more. Returns `Ok(true)` when the caller may sleep on the
    /// eventfd, `Ok(false)` to turn again at once; `Err` when the client is gone (every task
    /// was woken to see it).
    pub(crate) fn reactor_turn(&self) -> io::Result<bool> {
        self.drain();
        if self.closed() || self.inner.cancel.load(Relaxed) {
            self.wake_all_tasks();
            return Err(errno(ECONNABORTED));
        }
        self.inner.dispatched.store(false, Relaxed);
        self.view().client_wake_armed().store(1, SeqCst);
        // An event published before the stack saw the flag gets no eventfd write: take it now.
        self.drain();
        Ok(!self.inner.dispatched.swap(false, AcqRel))
    }

    /// Waits until `ready()` holds or `deadline` passes (returns false then). Fails with
    /// `ECONNABORTED` if the stack closed this client.
    pub(crate) fn wait_until(
        &self,
        deadline: Option<Instant>,
        ready: impl FnMut() -> bool,
    ) -> io::Result<bool> {
        self.wait_spinning(deadline, SPIN_CHECKS, ready)
    }

    fn wait_spinning(
        &self,
        deadline: Option<Instant>,
        spin_checks: u32,
        mut ready: impl FnMut() -> bool,
    ) -> io::Result<bool> {
        let view = self.view();
        let mut spins = 0u32;
        loop {
            self.drain();
            if ready() {
                return Ok(true);
            }
            if self.closed() {
                return Err(errno(ECONNABORTED));
            }
            if self.inner.cancel.load(Relaxed) {
                return Err(errno(EINTR));
            }
            // Spin by count, not by clock: reading the clock here costs more than a check. The
            // first look is by clock, so a zero timeout (a poll that only asks) returns at once
            // instead of after 32 checks and their yields, which cost the caller whole time
            // slices on a busy machine.
            spins += 1;
            if (spins == 1 || spins % 32 == 0) && deadline.is_some_and(|d| Instant::now() >= d) {
                return Ok(false);
            }
            if spins < spin_checks {
                // Give the core away between checks: on a small machine the thread we wait for
                // (the stack, or the kernel peer feeding it) may be waiting for this core.
                if spins % 8 == 0 {
                    std::thread::yield_now();
                } else {
                    std::hint::spin_loop();
                }
                continue;
            }
            spins = 0;
            let seq = view.client_wake_seq().load(SeqCst);
            view.client_waiters().fetch_add(1, SeqCst);
            self.drain();
            let ok = ready();
            if !ok && !self.closed() {
                let mut sleep = MAX_SLEEP;
                if let Some(d) = deadline {
                    sleep = sleep.min(d.saturating_duration_since(Instant::now()));
                }
                // A whole sleep with no word from the stack: see whether it is still there (a
                // stack in another process, such as qnetd's, may die and leave the ring as it was).
                if futex_wait(view.client_wake_seq(), seq, Some(sleep))
                    && peer_closed(self.inner.stream.as_raw_fd())
                {
                    tracing::warn!("qnet-client: the stack is gone");
                    self.inner.stack_gone.store(true, Relaxed);
                }
            }
            view.client_waiters().fetch_sub(1, SeqCst);
            if ok {
                return Ok(true);
            }
        }
    }

    /// Entries waiting in the ring's queues now, for metrics.
    pub fn occupancy(&self) -> Occupancy {
        let v = self.view();
        let depth = |tail: u32, head: u32| tail.wrapping_sub(head);
        Occupancy {
            submissions: depth(v.sq_tail().load(Acquire), v.sq_head().load(Acquire)),
            completions: depth(v.cq_tail().load(Acquire), v.cq_head().load(Acquire)),
            events: depth(v.ev_tail().load(Acquire), v.ev_head().load(Acquire)),
            capacity: v.geometry().sq_entries,
        }
    }

    /// Current readiness bits of a slot.
    ///
    /// The stack's `READY_IN` on a stream or datagram slot (those with `READY_CONNECTED` or
    /// `READY_OUT`) says the receive ring held bytes when the stack last looked; this client
    /// may have consumed them since, and the stack only looks again on its next pass. So the
    /// ring decides: readable while it holds unconsumed bytes (or at end of stream, reset or
    /// error). Otherwise a poll would report a drained socket readable and a blocking read
    /// would then wait.
    pub(crate) fn readiness(&self, slot: u32) -> u32 {
        let view = self.view();
        let Some(w) = view.slot_stack(slot) else {
            return READY_HUP | READY_ERR;
        };
        let r = w.readiness.load(Acquire);
        let has_ring = r & (READY_CONNECTED | READY_OUT) != 0;
        if !has_ring || r & (READY_RDHUP | READY_HUP | READY_ERR) != 0 {
            return r;
        }
        let head = view
            .slot_client(slot)
            .map_or(0, |c| c.rx_head.load(Acquire));
        if w.rx_tail.load(Acquire) != head {
            r | READY_IN
        } else {
            r & !READY_IN
        }
    }

    /// Readiness as poll, select and epoll report it: [`Client::readiness`], except that a
    /// connected slot is writable only while at least a third of its transmit ring is free
    /// (Linux's rule for a TCP socket: free space at least half of what is queued). Reporting
    /// it writable with a nearly full ring would have a non-blocking sender spin on tiny writes
    /// (iperf3 in a guest sent at 1 Gbit/s, its vCPU and syscall thread busy, the stack idle).
    /// A blocking write still takes any space; the stack's event for data it moves out of the
    /// ring wakes a poller to look again.
    pub(crate) fn poll_readiness(&self, slot: u32) -> u32 {
        let r = self.readiness(slot);
        if r & READY_OUT == 0 || r & (READY_HUP | READY_ERR) != 0 {
            return r;
        }
        let Some(tail) = self
            .view()
            .slot_client(slot)
            .map(|c| c.tx_tail.load(Acquire))
        else {
            return r;
        };
        let size = self.tx_limit(slot);
        if u64::from(self.tx_free(slot, tail)) * 3 >= u64::from(size) {
            r
        } else {
            r & !READY_OUT
        }
    }

    /// Free bytes in `slot`'s transmit ring with the client's tail at `tail`, as far as the
    /// stack has consumed it.
    pub(crate) fn tx_free(&self, slot: u32, tail: u32) -> u32 {
        let head = self
            .view()
            .slot_stack(slot)
            .map_or(0, |w| w.tx_head.load(Acquire));
        self.tx_limit(slot).saturating_sub(tail.wrapping_sub(head))
    }

    /// How much of `slot`'s transmit ring this client may fill (the stack's `tx_limit`, never
    /// more than the ring).
    pub(crate) fn tx_limit(&self, slot: u32) -> u32 {
        let view = self.view();
        let limit = view
            .slot_stack(slot)
            .map_or(0, |w| w.tx_limit.load(Acquire));
        limit.min(view.geometry().tx_buf_size)
    }

    /// The pending error of a slot, if any.
    pub(crate) fn slot_error(&self, slot: u32) -> Option<io::Error> {
        let e = self.view().slot_stack(slot)?.error.load(Acquire);
        (e != 0).then(|| errno(e as i32))
    }

    /// Waits until any of `interest` readiness bits is set on `slot`, or the deadline.
    pub(crate) fn wait_ready(
        &self,
        slot: u32,
        interest: u32,
        deadline: Option<Instant>,
    ) -> io::Result<bool> {
        self.wait_until(deadline, || self.readiness(slot) & interest != 0)
    }
}

/// The reactor thread's loop: wait for events, let `drain` wake their tasks, repeat.
fn reactor(weak: Weak<Inner>) {
    loop {
        let Some(inner) = weak.upgrade() else { return };
        let client = Client { inner };
        let until = Instant::now() + MAX_SLEEP;
        let woke = client.wait_spinning(Some(until), REACTOR_SPIN_CHECKS, || {
            client.inner.dispatched.swap(false, AcqRel)
        });
        if woke.is_err() {
            client.wake_all_tasks();
            return;
        }
    }
}
