//! The service loop: one thread that owns the interface, the device and every client session.
//!
//! Each pass takes ring operations, moves client data into smoltcp, feeds received frames in one
//! at a time (refilling listen queues between them), moves received data out to the rings, lets
//! smoltcp transmit, and wakes clients that were waiting. It keeps polling for `busy_poll` after
//! its last work, then tells the clients it is going to sleep (`STACK_NEED_WAKEUP`) and sleeps in
//! io_uring until a frame, a doorbell, a hang-up or smoltcp's next timer.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use crossbeam_channel::{Receiver, Sender};
use smoltcp::iface::{PollIngressSingleResult, PollResult};
use smoltcp::time::Instant;

use qnet_client::sys::{eventfd, eventfd_signal};

use qnet_ring::{Geometry, STACK_NEED_WAKEUP};

use crate::attach::Attacher;
use crate::config::StackConfig;
use crate::hot::HotStreams;
use crate::net::{to_std, Net, NetStats};
use crate::phy::{DeviceStats, LocalAddrs, Tap, UringTap};
use crate::session::{Session, Violation};

/// Longest sleep when smoltcp has no timer pending (a safety net, not a poll interval).
const MAX_SLEEP: Duration = Duration::from_secs(1);
/// Frames fed to smoltcp per pass: small batches get ACKs out sooner, and senders whose
/// congestion control tracks the round-trip time (BBR) then keep their window open.
const INGRESS_PER_PASS: usize = 16;
/// Bound on egress calls per pass, so one busy pass cannot starve the rings.
const EGRESS_ROUNDS: usize = 64;
/// Sleep while closing sockets linger, so they are reaped promptly.
const LINGER_SLEEP: Duration = Duration::from_millis(100);
/// How long a stopping stack lets closed connections send what they hold and finish (FIN
/// acknowledged, peer's FIN received) before it resets the rest: what a kernel would do
/// after the process exits, bounded so a peer that stopped reading cannot hold the VMM.
const DRAIN_LIMIT: Duration = Duration::from_secs(2);

/// Stops a running stack from another thread, and reads its counters.
#[derive(Clone)]
pub struct StackHandle {
    stop: Arc<AtomicBool>,
    doorbell: Arc<OwnedFd>,
    stats: Arc<Mutex<StackStats>>,
    tasks: Sender<StackTask>,
}

/// Work the stack's own thread runs between passes (see [`StackHandle::on_stack_thread`]).
type StackTask = Box<dyn FnOnce() + Send>;

impl StackHandle {
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        eventfd_signal(self.doorbell.as_raw_fd());
    }

    /// Runs `f` on the stack's thread between two passes and returns what it returned, or
    /// `None` if the stack ended first. For what only a thread can do to itself (a VMM stacks
    /// its seccomp filter for the network thread this way).
    pub fn on_stack_thread<R: Send + 'static>(
        &self,
        f: impl FnOnce() -> R + Send + 'static,
    ) -> Option<R> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        let task: StackTask = Box::new(move || {
            let _ = tx.send(f());
        });
        self.tasks.send(task).ok()?;
        eventfd_signal(self.doorbell.as_raw_fd());
        rx.recv().ok()
    }

    /// The stack's counters as of its last report (at most [`STATS_EVERY`] old while it runs).
    pub fn stats(&self) -> StackStats {
        *self.stats.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// How often the loop publishes its counters to [`StackHandle::stats`].
pub const STATS_EVERY: Duration = Duration::from_secs(1);

/// Counters of the whole stack.
#[derive(Clone, Copy, Debug, Default)]
pub struct StackStats {
    pub device: DeviceStats,
    pub net: NetStats,
    pub sessions: usize,
    /// Bytes of the clients' ring regions in memory (their byte rings are most of it).
    pub ring_resident_bytes: u64,
}

pub struct Stack {
    net: Net,
    dev: UringTap,
    sessions: HashMap<u64, Session>,
    incoming: Receiver<Session>,
    tasks: Receiver<StackTask>,
    stop: Arc<AtomicBool>,
    epoch: std::time::Instant,
    busy_poll: Duration,
    published_stats: Arc<Mutex<StackStats>>,
    /// The TCP sockets that received in bulk lately: the next frame's payload is read straight
    /// into the storage of the one it likely belongs to (hot.rs), unless `QNET_RX_LAND=off`.
    rx_hot: HotStreams,
    land: bool,
}

impl Stack {
    /// Builds a stack on an open TAP. Returns the stack (run it with [`Stack::run`]), the
    /// attacher that admits clients, and a handle to stop it.
    pub fn new(
        cfg: StackConfig,
        tap: Option<Tap>,
    ) -> anyhow::Result<(Stack, Arc<Attacher>, StackHandle)> {
        cfg.validate()?;
        let geometry = Geometry::new(256, 512, cfg.ring_slots, cfg.ring_tx_buf, cfg.ring_rx_buf)
            .map_err(|e| anyhow::anyhow!("ring geometry: {e}"))?;
        let doorbell = Arc::new(eventfd().context("creating the doorbell eventfd")?);
        let dup = doorbell.try_clone().context("duplicating the doorbell")?;
        let local = LocalAddrs {
            mac: cfg.mac.0,
            ip: cfg.addr.addr,
            loopback: cfg.loopback,
        };
        let mut dev = UringTap::new(tap.map(|t| t.fd), dup, cfg.mtu as usize, local)
            .context("setting up io_uring")?;
        dev.queues.set_gso_max(cfg.gso_max as usize);
        let epoch = std::time::Instant::now();
        let busy_poll = cfg.busy_poll;
        let net = Net::new(cfg, &mut dev.queues, Instant::ZERO);
        let (tx, rx) = crossbeam_channel::unbounded();
        let stop = Arc::new(AtomicBool::new(false));
        let attacher = Arc::new(Attacher::new(geometry, doorbell.clone(), tx));
        let stats = Arc::new(Mutex::new(StackStats::default()));
        let (task_tx, task_rx) = crossbeam_channel::unbounded();
        let handle = StackHandle {
            stop: stop.clone(),
            doorbell,
            stats: stats.clone(),
            tasks: task_tx,
        };
        let stack = Stack {
            net,
            dev,
            sessions: HashMap::new(),
            incoming: rx,
            tasks: task_rx,
            stop,
            epoch,
            busy_poll,
            published_stats: stats,
            rx_hot: HotStreams::default(),
            land: std::env::var("QNET_RX_LAND").as_deref() != Ok("off"),
        };
        Ok((stack, attacher, handle))
    }

    fn now(&self) -> Instant {
        Instant::from_micros(self.epoch.elapsed().as_micros() as i64)
    }

    pub fn stats(&self) -> StackStats {
        StackStats {
            device: self.dev.stats(),
            net: self.net.stats(),
            sessions: self.sessions.len(),
            ring_resident_bytes: self.sessions.values().map(Session::resident_bytes).sum(),
        }
    }

    fn end_session(&mut self, id: u64, why: &str) {
        if let Some(mut s) = self.sessions.remove(&id) {
            self.dev.queues.remove_payload_region(s.mapping());
            let now = self.now();
            s.teardown(&mut self.net, now);
            tracing::info!(session = id, "client detached: {why}");
        }
    }

    /// Detaches sessions whose clients hung up (their open sockets reset, their closed streams
    /// left to send), and ends detached sessions once those streams are done or
    /// [`DRAIN_LIMIT`] has passed.
    fn retire_hung_up(&mut self, now: Instant) {
        let clock = std::time::Instant::now();
        let mut done = Vec::new();
        for s in self.sessions.values_mut() {
            if s.hung_up && s.detached_until.is_none() {
                s.detach(&mut self.net, now);
                s.detached_until = Some(clock + DRAIN_LIMIT);
            }
            if let Some(until) = s.detached_until {
                if !s.has_closing_streams() {
                    done.push((s.id, "connection closed"));
                } else if clock >= until {
                    done.push((s.id, "connection closed; its closed streams timed out"));
                }
            }
        }
        for (id, why) in done {
            self.end_session(id, why);
        }
    }

    /// Lets smoltcp transmit until it is done (each call emits at most one packet per socket)
    /// or the transmit queue is full; returns whether anything was sent.
    fn egress(&mut self, now: Instant) -> bool {
        let mut sent = false;
        for _ in 0..EGRESS_ROUNDS {
            let r = self
                .net
                .iface
                .poll_egress(now, &mut self.dev.queues, &mut self.net.sockets);
            if r == PollResult::None {
                break;
            }
            sent = true;
        }
        sent
    }

    /// Moves data and readiness for every session not already found in violation; returns
    /// whether anything moved.
    /// With `all` false, only the slots the clients' operations touched this pass.
    fn service_sessions(
        &mut self,
        now: Instant,
        violations: &mut Vec<(u64, Violation)>,
        all: bool,
    ) -> bool {
        let mut moved = false;
        for s in self.sessions.values_mut() {
            if violations.iter().any(|(id, _)| *id == s.id) {
                continue;
            }
            let r = if all {
                s.service(&mut self.net, now)
            } else {
                s.service_touched(&mut self.net, now)
            };
            match r {
                Ok(m) => moved |= m,
                Err(v) => violations.push((s.id, v)),
            }
        }
        moved
    }

    /// One pass over everything; returns whether any work was done.
    fn pass(&mut self) -> anyhow::Result<bool> {
        let reaped = self.dev.reap();
        if !self.dev.gathering() {
            for s in self.sessions.values_mut() {
                s.give_back_released();
            }
        }
        // A client that hung up is served once more below: a close it posted just before it
        // went (a container that writes its answer, closes and exits) is carried out, not
        // turned into a reset of the stream.
        for id in reaped.hangups {
            if let Some(s) = self.sessions.get_mut(&id) {
                s.hung_up = true;
            }
        }
        while let Ok(s) = self.incoming.try_recv() {
            self.dev
                .watch_hangup(s.stream.as_raw_fd(), s.id)
                .context("watching a client")?;
            self.dev.queues.add_payload_region(s.mapping().clone());
            self.sessions.insert(s.id, s);
        }
        let now = self.now();
        self.net.iface.poll_maintenance(now);
        let mut work = reaped.rx_ready || self.dev.queues.has_rx();
        let mut violations = Vec::new();
        for s in self.sessions.values_mut() {
            match s.process_submissions(&mut self.net, now) {
                Ok(n) => work |= n > 0,
                Err(v) => violations.push((s.id, v)),
            }
        }
        // Data the clients just published goes into smoltcp before the frames are fed in (their
        // kicks name the slots); the full sweep below catches everything else.
        work |= self.service_sessions(now, &mut violations, false);
        // One frame at a time, so listen queues are refilled between SYNs. Stops early when the
        // transmit queue is full (smoltcp needs a transmit token for every received frame);
        // the frames wait in the TAP for the next pass, after completions are reaped. Before
        // each, the hot stream's next in-order byte is looked up: a frame that continues it
        // is read straight there. Only while the stack serves one client: a frame that turns
        // out to be another flow's passes through that storage on its way, and must not pass
        // through another client's memory.
        let land = self.land && self.sessions.len() == 1;
        for _ in 0..INGRESS_PER_PASS {
            let last = self.dev.queues.last_rx_flow();
            self.dev.queues.landing = if land {
                self.rx_hot.guess(last).and_then(|h| self.net.rx_landing(h))
            } else {
                None
            };
            let guessed = self.dev.queues.landing.is_some();
            let (frames, landed) = self.dev.queues.rx_counts();
            let r = self.net.iface.poll_ingress_single(
                now,
                &mut self.dev.queues,
                &mut self.net.sockets,
            );
            let (frames_now, landed_now) = self.dev.queues.rx_counts();
            if frames_now > frames {
                let now_flow = self.dev.queues.last_rx_flow();
                self.rx_hot
                    .outcome(last, now_flow, guessed, landed_now > landed);
            }
            if r == PollIngressSingleResult::None {
                break;
            }
            work = true;
            if !self.net.listeners.is_empty() {
                self.net.refill_listeners();
            }
        }
        // ACKs first, before the (slower) copies into the rings: the sender's round-trip time is
        // what window-based congestion control (BBR) sizes its window by.
        self.dev.queues.landing = None;
        work |= self.egress(now);
        work |= self.service_sessions(now, &mut violations, true);
        for s in self.sessions.values_mut() {
            for handle in s.take_rx_hot() {
                if let Some(flow) = self.net.tcp_flow(handle) {
                    self.rx_hot.note_bulk(flow, handle);
                }
            }
        }
        work |= self.egress(now);
        self.net.reap_lingering(now);
        for (id, v) in violations {
            tracing::error!(session = id, "closing client: {v}");
            self.net.stats.sessions_closed_for_violation += 1;
            self.end_session(id, "protocol violation");
        }
        self.retire_hung_up(now);
        for s in self.sessions.values_mut() {
            s.wake_client();
        }
        self.dev.arm().context("arming the TAP")?;
        Ok(work)
    }

    /// Runs until [`StackHandle::stop`] is called.
    pub fn run(&mut self) -> anyhow::Result<()> {
        // Large TCP payloads in a client's ring go to the TAP from there (phy/uring.rs);
        // `QNET_TX_GATHER=off` copies every payload into its frame instead.
        if std::env::var("QNET_TX_GATHER").as_deref() != Ok("off") {
            smoltcp::phy::set_detach_min(crate::phy::uring::DETACH_MIN);
        }
        let mut last_work = std::time::Instant::now();
        let mut last_report = last_work;
        while !self.stop.load(Ordering::Relaxed) {
            while let Ok(task) = self.tasks.try_recv() {
                task();
            }
            if last_report.elapsed() >= STATS_EVERY {
                last_report = std::time::Instant::now();
                for s in self.sessions.values_mut() {
                    s.give_back_idle_rings(&mut self.net);
                }
                let stats = self.stats();
                *self
                    .published_stats
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = stats;
                tracing::debug!(
                    ?stats,
                    tx_outstanding = self.dev.queues.tx_outstanding(),
                    rx_armed = self.dev.rx_armed(),
                    cq_dropped = self.dev.cq_dropped(),
                    "stack"
                );
            }
            if self.pass()? {
                last_work = std::time::Instant::now();
            }
            if last_work.elapsed() < self.busy_poll {
                self.dev.submit().context("submitting to io_uring")?;
                // Busy-poll only on a core nobody else wants: on a small machine the threads
                // that feed the stack (a guest's vCPU and syscall thread, the peer) need this
                // core more than the stack needs a head start (nginx in a guest: 3.3k -> 8-10k
                // requests/s on 2 cores, docs/benchmarks.md).
                std::thread::yield_now();
                continue;
            }
            // Announce the sleep, then look once more: a client that published before seeing
            // the flag will not ring the doorbell (ring.md, "Wake-ups").
            for s in self.sessions.values() {
                s.set_stack_flag(STACK_NEED_WAKEUP, true);
            }
            // Writers that saw a slot's kick flag still set since the stack woke published
            // without kicking: one more pass finds their bytes (ring.md, "Wake-ups").
            // Likewise readers the stack wants to hear of learn so only now (rx_wanted): while
            // it is awake it sees every rx_head on its passes, and a kick per read cost the
            // guest a VM exit each.
            let mut pending = false;
            for s in self.sessions.values_mut() {
                pending |= s.rearm_tx_kicks();
                pending |= s.rearm_rx_kicks();
            }
            pending |= self.sessions.values().any(Session::has_submissions);
            if !pending && !self.dev.queues.has_rx() {
                let now = self.now();
                let mut timeout = self
                    .net
                    .iface
                    .poll_delay(now, &self.net.sockets)
                    .map_or(MAX_SLEEP, to_std)
                    .min(MAX_SLEEP);
                if self.net.has_lingering() {
                    timeout = timeout.min(LINGER_SLEEP);
                }
                // Wake for the next report (and ring sweep) on time.
                timeout = timeout.min(STATS_EVERY.saturating_sub(last_report.elapsed()));
                if !timeout.is_zero() {
                    self.dev
                        .wait(Some(timeout))
                        .context("waiting on io_uring")?;
                }
            }
            for s in self.sessions.values() {
                s.set_stack_flag(STACK_NEED_WAKEUP, false);
            }
        }
        // What the clients queued before the stop (a last write, a close) is carried out
        // first: a container that writes its answer, closes and exits stops its stack at once,
        // and ending the sessions first would reset that connection with the answer unsent.
        // A closed stream's ring may hold more than its socket takes at once (1 MiB each):
        // passes continue until every closed stream has handed its socket the rest.
        let end = std::time::Instant::now() + DRAIN_LIMIT;
        self.pass()?;
        while self.sessions.values().any(Session::has_closing_streams)
            && std::time::Instant::now() < end
        {
            self.dev
                .wait(Some(Duration::from_millis(2)))
                .context("waiting on io_uring")?;
            self.pass()?;
        }
        let ids: Vec<u64> = self.sessions.keys().copied().collect();
        for id in ids {
            self.end_session(id, "stack stopped");
        }
        self.drain(end)
    }

    /// Lets the connections the clients closed send their FINs (as a kernel finishes a socket
    /// after its process exits), then resets what is left, so no peer waits forever on a
    /// connection that vanished with the stack.
    fn drain(&mut self, end: std::time::Instant) -> anyhow::Result<()> {
        while self.net.has_lingering() && std::time::Instant::now() < end {
            self.pass()?;
            self.dev
                .wait(Some(Duration::from_millis(2)))
                .context("waiting on io_uring")?;
        }
        self.net.abort_all();
        let now = self.now();
        self.egress(now);
        self.dev.arm().context("arming the TAP")?;
        // Let the resets reach the TAP before the ring goes away.
        self.dev
            .wait(Some(Duration::from_millis(2)))
            .context("waiting on io_uring")?;
        self.dev.reap();
        Ok(())
    }
}
