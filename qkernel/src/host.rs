//! Requests from outside the container: a process the runtime's `exec` starts in it, and
//! signals for such a process. The platform queues them ([`Machine::take_host_requests`]) and
//! the kernel serves them where it looks at host signals, reporting back through
//! [`Machine::host_event`].
//!
//! An exec'd process is a child of no process in the container (its parent pid is 0, as a
//! process entered from outside a pid namespace sees it); it is reaped by the kernel as it
//! exits, and its wait status goes to the platform. Its stdio are files the platform opened
//! for it (the exec caller's pipes or terminal).

use crate::errno::*;
use crate::machine::{HostFile, Machine};
use crate::process::{Parked, Saved, Thread};
use crate::syscalls::{Kernel, Proc};

/// A process to start in the container.
#[derive(Debug, Clone)]
pub struct SpawnRequest {
    /// Names the request in the events about it.
    pub id: u64,
    pub argv: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    /// uid, gid and supplementary groups.
    pub user: (u32, u32, Vec<u32>),
    /// Its stdin, stdout and stderr.
    pub stdio: [HostFile; 3],
}

/// What the platform asks of the kernel.
#[derive(Debug, Clone)]
pub enum HostRequest {
    Spawn(SpawnRequest),
    /// A signal from outside for a process started by a [`HostRequest::Spawn`].
    Signal {
        pid: i64,
        sig: i32,
    },
}

/// What the kernel tells the platform about a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostEvent {
    /// The process of request `id` runs as `pid`, or could not start (an errno).
    Started { id: u64, pid: Result<i64, i64> },
    /// The process of request `id` ended with wait status `status`.
    Exited { id: u64, status: i32 },
}

impl Kernel {
    /// The platform may send requests (an OCI container, whose runtime can `exec`): waits
    /// must then let the kernel look at them, so even a thread alone waits parked (in slices)
    /// rather than in one host call that nothing but its own event ends.
    pub fn accept_host_requests(&mut self) {
        self.host_requests = true;
    }

    /// Serves what the platform asked for since the last look.
    pub(crate) fn serve_host_requests(&mut self, m: &mut dyn Machine) {
        for request in m.take_host_requests() {
            match request {
                HostRequest::Spawn(s) => {
                    let pid = self.spawn(m, &s);
                    if pid.is_err() {
                        for file in s.stdio {
                            m.fs_close(file);
                        }
                    }
                    m.host_event(HostEvent::Started { id: s.id, pid });
                }
                HostRequest::Signal { pid, sig } => self.signal_from_outside(m, pid, sig),
            }
        }
    }

    /// Starts the process of `s`: its program loaded in a space of its own, runnable.
    fn spawn(&mut self, m: &mut dyn Machine, s: &SpawnRequest) -> Result<i64, i64> {
        if self.procs.tasks() + 1 >= self.max_processes {
            return Err(EAGAIN);
        }
        let first = s.argv.first().ok_or(EINVAL)?;
        let path = self.find_program(m, first, &s.env)?;
        if !s.cwd.starts_with('/') {
            return Err(EINVAL);
        }
        let fpu = m.fpu_initial()?;
        let current = self.space(m);
        let (loaded, exe, space) = self.load_program(m, path, s.argv.clone(), &s.env)?;
        m.space_switch(current);
        let pid = self.procs.new_pid();
        let stdio = s.stdio.map(|file| crate::fs::FileKind::Host {
            file,
            path: b"pipe:[exec]".to_vec(),
        });
        let mut proc = Proc::new(
            pid,
            loaded.brk,
            &exe,
            s.cwd.as_bytes().to_vec(),
            crate::fs::FdTable::with_stdio(stdio),
        );
        proc.ppid = 0;
        proc.space = space;
        proc.cmdline = crate::process::cmdline_of(&s.argv);
        proc.cred = crate::cred::Cred::new(s.user.0, s.user.1, s.user.2.clone());
        let regs = crate::UserRegs {
            rip: loaded.entry,
            rsp: loaded.stack_pointer,
            rflags: 0x202,
            ..Default::default()
        };
        self.procs.parked.insert(pid, Parked { proc, zombie: None });
        self.procs
            .add_runnable(pid, Thread::new(pid, 0), Saved::fresh(regs, fpu));
        self.outside.insert(pid, s.id);
        tracing::debug!(pid, exe = %String::from_utf8_lossy(&exe), "exec from outside");
        Ok(pid)
    }

    /// `name` as a path in the root: as is with a '/', else looked up in the PATH of `env`.
    fn find_program(
        &self,
        m: &mut dyn Machine,
        name: &str,
        env: &[String],
    ) -> Result<Vec<u8>, i64> {
        if name.contains('/') {
            return Ok(name.as_bytes().to_vec());
        }
        let path = env
            .iter()
            .find_map(|e| e.strip_prefix("PATH="))
            .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
        path.split(':')
            .map(|dir| format!("{dir}/{name}").into_bytes())
            .find(|candidate| m.fs_stat_path(candidate, true).is_ok())
            .ok_or(ENOENT)
    }

    /// A signal from outside for process `pid`: its handler runs, or its default action is
    /// taken (for the running process, at the end of what it is doing: see
    /// [`Kernel::doomed`]).
    fn signal_from_outside(&mut self, m: &mut dyn Machine, pid: i64, sig: i32) {
        let sig = sig as u64;
        if !(1..=64).contains(&sig) || !self.outside.contains_key(&pid) {
            return;
        }
        let info = crate::signal::SigInfo {
            code: 0, // SI_USER, from pid 0: outside the container
            pid: 0,
            status: 0,
            addr: 0,
            overrun: 0,
            value: 0,
        };
        self.signal_asynchronously(m, pid, sig, info);
    }

    /// A signal for process `pid` that no call of it caused (from outside, a timer): its
    /// handler runs, or its default action is taken (for the running process, at the end of
    /// what it is doing: see [`Kernel::doomed`]).
    pub(crate) fn signal_asynchronously(
        &mut self,
        m: &mut dyn Machine,
        pid: i64,
        sig: u64,
        info: crate::signal::SigInfo,
    ) {
        if self.signal_process(m, pid, sig, info) {
            // The running process: it ends as soon as it is the running one again for sure
            // (its call's end, a preemption, its next resume); a parked thread of it wakes
            // to get there.
            self.doomed = Some((pid, sig as i32));
            for tid in self.procs.threads_of(pid) {
                self.procs.make_runnable(tid);
            }
        }
    }

    /// The signal that ends the running process, if one from outside does
    /// ([`Kernel::signal_from_outside`]).
    pub(crate) fn doomed_now(&mut self) -> Option<i32> {
        match self.doomed {
            Some((pid, sig)) if pid == self.p.pid && self.t.tid != 0 => {
                self.doomed = None;
                Some(sig)
            }
            _ => None,
        }
    }

    /// Process `pid` exited with wait status `status`: if it was started from outside, the
    /// platform learns of it, and true says the caller reaps it (no parent in the container
    /// waits for it).
    pub(crate) fn tell_outside(&mut self, m: &mut dyn Machine, pid: i64, status: i32) -> bool {
        let Some(id) = self.outside.remove(&pid) else {
            return false;
        };
        m.host_event(HostEvent::Exited { id, status });
        true
    }
}
