//! /proc, made up at open from the kernel's state: what libcs and runtimes read about memory,
//! the CPU and the container (meminfo, cpuinfo, uptime, loadavg, stat), the process itself
//! (`/proc/self/...`: status, stat, statm, comm, cmdline, exe, fd/, maps), and every other
//! process of the container (`/proc/PID/`: status, stat, statm, comm, cmdline), listed in
//! `/proc` as `ps` reads them. The rest of /proc does not exist (ENOENT).

use crate::elf::PAGE;
use crate::errno::*;
use crate::fs::{FileKind, Generated};
use crate::machine::Machine;
use crate::syscalls::Kernel;

/// d_type of a symbolic link and of a directory in a `linux_dirent64`.
const DT_DIR: u8 = 4;
const DT_LNK: u8 = 10;

/// `linux_dirent64` records for `entries` (inode, type, name), as getdents64 returns them.
fn dirents(entries: &[(u64, u8, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (ino, ty, name) in entries {
        let len = (19 + name.len() + 1).div_ceil(8) * 8;
        let next = (out.len() + len) as i64;
        out.extend_from_slice(&ino.to_le_bytes());
        out.extend_from_slice(&next.to_le_bytes());
        out.extend_from_slice(&(len as u16).to_le_bytes());
        out.push(*ty);
        out.extend_from_slice(name);
        out.resize(out.len() + len - 19 - name.len(), 0);
    }
    out
}

/// The path with the running process's own pid written `self`.
fn as_self(path: &[u8], pid: i64) -> Vec<u8> {
    let me = format!("/proc/{pid}");
    match path.strip_prefix(me.as_bytes()) {
        Some(rest) if rest.is_empty() || rest[0] == b'/' => {
            [b"/proc/self".as_slice(), rest].concat()
        }
        _ => path.to_vec(),
    }
}

impl Kernel {
    /// Opens a /proc path: a file made up now, or the `fd` directory.
    pub(crate) fn proc_open(&self, m: &mut dyn Machine, path: &[u8]) -> Result<FileKind, i64> {
        let path = as_self(path, self.p.pid);
        if path == b"/proc/self/fd" {
            return Ok(FileKind::Generated(Generated::dir(self.fd_dirents())));
        }
        if path == b"/proc" || path == b"/proc/" {
            return Ok(FileKind::Generated(Generated::dir(self.proc_dirents())));
        }
        if let Some((pid, b"")) = pid_path(&path) {
            self.proc_view(pid).ok_or(ENOENT)?;
            let own = pid == PidRef::SelfPid;
            return Ok(FileKind::Generated(Generated::dir(self.pid_dirents(own))));
        }
        Ok(FileKind::Generated(Generated::new(
            self.proc_file(m, &path)?,
        )))
    }

    /// The target of a /proc symbolic link (`self/exe`, `self/fd/N`); None for other paths.
    pub(crate) fn proc_readlink(&self, path: &[u8]) -> Option<Result<Vec<u8>, i64>> {
        let path = as_self(path, self.p.pid);
        if path == b"/proc/self/exe" {
            return Some(Ok(self.p.exe.clone()));
        }
        let fd = path.strip_prefix(b"/proc/self/fd/")?;
        let fd: u64 = match std::str::from_utf8(fd).ok().and_then(|s| s.parse().ok()) {
            Some(fd) => fd,
            None => return Some(Err(ENOENT)),
        };
        Some(self.p.fds.kind(fd).map(fd_target).map_err(|_| ENOENT))
    }

    /// stat/lstat of a /proc path (`follow`: through a final link): None for a path that is
    /// not one of ours.
    pub(crate) fn proc_stat(
        &self,
        m: &mut dyn Machine,
        path: &[u8],
        follow: bool,
    ) -> Option<Result<[u8; 144], i64>> {
        let path = as_self(path, self.p.pid);
        if path == b"/proc" || path == b"/proc/self/fd" {
            return Some(Ok(Kernel::stat_with_mode(0o040555)));
        }
        if let Some((pid, b"")) = pid_path(&path) {
            return Some(
                self.proc_view(pid)
                    .map(|_| Kernel::stat_with_mode(0o040555))
                    .ok_or(ENOENT),
            );
        }
        if let Some(fd) = path.strip_prefix(b"/proc/self/fd/") {
            let fd = std::str::from_utf8(fd)
                .ok()
                .and_then(|s| s.parse::<u64>().ok());
            return Some(match fd {
                Some(fd) if self.p.fds.kind(fd).is_ok() && follow => self.stat_fd(m, fd),
                Some(fd) if self.p.fds.kind(fd).is_ok() => Ok(Kernel::stat_with_mode(0o120777)),
                _ => Err(ENOENT),
            });
        }
        if path == b"/proc/self/exe" {
            return None; // the program's file, through alias
        }
        Some(
            self.proc_file(m, &path)
                .map(|_| Kernel::stat_with_mode(0o100444)),
        )
    }

    /// /proc/self/fd: ".", ".." and a link per open descriptor.
    fn fd_dirents(&self) -> Vec<u8> {
        let mut entries = vec![(1, DT_DIR, b".".to_vec()), (1, DT_DIR, b"..".to_vec())];
        for fd in self.p.fds.open_fds() {
            entries.push((fd + 100, DT_LNK, fd.to_string().into_bytes()));
        }
        dirents(&entries)
    }

    /// /proc/self/maps: the heap, the mappings mmap made (and the platform's jump slots of
    /// patched syscall sites, read-only), the stack and the vDSO with its data page (the
    /// program's own image is not listed).
    fn maps(&self, vdso: Option<crate::machine::Vdso>) -> String {
        use crate::elf::{STACK_SIZE, STACK_TOP};
        let line = |start: u64, end: u64, perms: &str, name: &str| {
            format!("{start:08x}-{end:08x} {perms} 00000000 00:00 0 {name}\n")
        };
        let mut out = String::new();
        if self.p.brk_mapped > self.p.brk_start {
            out += &line(self.p.brk_start, self.p.brk_mapped, "rw-p", "[heap]");
        }
        for (start, end, backing) in self.p.vm.mappings() {
            out += &match backing {
                crate::syscalls::Backing::JumpSlots => line(start, end, "r--p", "[syscall-slots]"),
                crate::syscalls::Backing::SharedAnon => {
                    line(start, end, "rwxs", "/dev/zero (deleted)")
                }
                crate::syscalls::Backing::SharedFile => line(start, end, "rwxs", ""),
                crate::syscalls::Backing::CachedReadOnly => line(start, end, "r--p", ""),
                _ => line(start, end, "rwxp", ""),
            };
        }
        out += &line(STACK_TOP - STACK_SIZE, STACK_TOP, "rw-p", "[stack]");
        if let Some(v) = vdso {
            out += &line(v.data, v.data + PAGE, "r--p", "[vvar]");
            let end = v.image + v.image_len.div_ceil(PAGE) * PAGE;
            out += &line(v.image, end, "r-xp", "[vdso]");
        }
        out
    }

    /// The contents of a /proc file: what libcs and runtimes read about memory, the CPU and
    /// the process itself. Others do not exist (ENOENT).
    fn proc_file(&self, m: &mut dyn Machine, path: &[u8]) -> Result<Vec<u8>, i64> {
        let text = match path {
            b"/proc/meminfo" => {
                let (total, used) = m.memory_info();
                let (total_kb, free_kb) = (total >> 10, total.saturating_sub(used) >> 10);
                format!(
                    "MemTotal:       {total_kb:8} kB\nMemFree:        {free_kb:8} kB\n\
                     MemAvailable:   {free_kb:8} kB\nBuffers:               0 kB\n\
                     Cached:                0 kB\nSwapTotal:             0 kB\n\
                     SwapFree:              0 kB\n"
                )
            }
            b"/proc/cpuinfo" => String::from_utf8_lossy(&m.cpuinfo()).into_owned(),
            b"/proc/self/maps" => self.maps(m.vdso()),
            b"/proc/uptime" => {
                let up = self.uptime_ns(m);
                let (secs, hundredths) = (up / 1_000_000_000, up / 10_000_000 % 100);
                format!("{secs}.{hundredths:02} {secs}.{hundredths:02}\n")
            }
            b"/proc/loadavg" => {
                let (running, threads) = self.thread_counts();
                format!(
                    "0.00 0.00 0.00 {running}/{threads} {}\n",
                    self.procs.last_pid()
                )
            }
            b"/proc/stat" => {
                // One CPU (the vCPU); its times are not kept (zeros), boot time and counts are.
                let boot = m.realtime_ns().saturating_sub(self.uptime_ns(m)) / 1_000_000_000;
                let (running, _) = self.thread_counts();
                format!(
                    "cpu  0 0 0 0 0 0 0 0 0 0\ncpu0 0 0 0 0 0 0 0 0 0 0\nintr 0\nctxt 0\n\
                     btime {boot}\nprocesses {}\nprocs_running {running}\n\
                     procs_blocked 0\n",
                    self.procs.last_pid(),
                )
            }
            _ => {
                // /proc/PID/FILE of any process: its status, stat, statm, comm, cmdline.
                let (pid, file) = pid_path(path).ok_or(ENOENT)?;
                let view = self.proc_view(pid).ok_or(ENOENT)?;
                // The running process's space is the current one (a vfork child's included).
                let space = match view.state {
                    'R' => m.space_current(),
                    _ => view.p.space,
                };
                let sizes = Sizes::of(m, view.p, space);
                let times = Times {
                    start: view.p.start_ns.saturating_sub(self.boot_ns) / TICK_NS,
                    cpu: self.cpu_of(m, view.p) / TICK_NS,
                    children: view.p.children_cpu_ns / TICK_NS,
                };
                return view.file(file, &sizes, &times).ok_or(ENOENT);
            }
        };
        Ok(text.into_bytes())
    }

    /// CPU time of process `p` (the running one or a parked one), without charging anyone.
    pub(crate) fn cpu_of(&self, m: &dyn Machine, p: &crate::syscalls::Proc) -> u64 {
        let mut cpu = p.exited_cpu_ns + self.procs.threads_cpu_ns(p.pid);
        if p.pid == self.p.pid {
            cpu += self.t.cpu_ns + m.cpu_time_ns().saturating_sub(self.cpu_mark);
        }
        cpu
    }

    /// Time since the container's first call.
    fn uptime_ns(&self, m: &dyn Machine) -> u64 {
        m.monotonic_ns().saturating_sub(self.boot_ns)
    }

    /// (threads that may run now, every thread) of the container.
    fn thread_counts(&self) -> (usize, usize) {
        let (runnable, all) = self.procs.thread_counts();
        (runnable + 1, all + 1) // and the one running
    }

    /// What /proc shows of process `pid` (`self` is the running one), if it exists.
    fn proc_view(&self, pid: PidRef) -> Option<ProcView<'_>> {
        let pid = match pid {
            PidRef::SelfPid => self.p.pid,
            PidRef::Pid(p) => p,
        };
        if pid == self.p.pid {
            return Some(ProcView {
                p: &self.p,
                tid: self.t.tid,
                sigmask: self.t.sigmask,
                state: 'R',
                threads: 1 + self.procs.threads_of(pid).len(),
            });
        }
        let parked = self.procs.parked.get(&pid)?;
        let state = if parked.zombie.is_some() {
            'Z'
        } else if self.procs.is_stopped(pid) {
            'T'
        } else {
            'S'
        };
        Some(ProcView {
            p: &parked.proc,
            tid: pid,
            sigmask: 0,
            state,
            threads: self.procs.threads_of(pid).len(),
        })
    }

    /// /proc: its files, `self`, and a directory per process.
    fn proc_dirents(&self) -> Vec<u8> {
        let mut entries = vec![
            (1, DT_DIR, b".".to_vec()),
            (1, DT_DIR, b"..".to_vec()),
            (2, DT_LNK, b"self".to_vec()),
            (3, DT_REG, b"meminfo".to_vec()),
            (4, DT_REG, b"cpuinfo".to_vec()),
            (5, DT_REG, b"uptime".to_vec()),
            (6, DT_REG, b"loadavg".to_vec()),
            (7, DT_REG, b"stat".to_vec()),
        ];
        let mut pids: Vec<i64> = self.procs.parked.keys().copied().collect();
        pids.push(self.p.pid);
        pids.sort_unstable();
        for pid in pids {
            entries.push((1000 + pid as u64, DT_DIR, pid.to_string().into_bytes()));
        }
        dirents(&entries)
    }

    /// /proc/PID: the files each process has.
    fn pid_dirents(&self, own: bool) -> Vec<u8> {
        let mut entries = vec![(1, DT_DIR, b".".to_vec()), (1, DT_DIR, b"..".to_vec())];
        for name in ["status", "stat", "statm", "comm", "cmdline"] {
            entries.push((5, DT_REG, name.as_bytes().to_vec()));
        }
        if own {
            entries.push((6, DT_LNK, b"exe".to_vec()));
            entries.push((7, DT_DIR, b"fd".to_vec()));
            entries.push((8, DT_REG, b"maps".to_vec()));
        }
        dirents(&entries)
    }
}

/// d_type of a regular file.
const DT_REG: u8 = 8;

/// A process named in a /proc path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PidRef {
    SelfPid,
    Pid(i64),
}

/// `/proc/PID/FILE` (or `/proc/self/FILE`): the process and the file's name.
fn pid_path(path: &[u8]) -> Option<(PidRef, &[u8])> {
    let rest = path.strip_prefix(b"/proc/")?;
    let (who, file) = match rest.iter().position(|b| *b == b'/') {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &b""[..]),
    };
    let pid = match who {
        b"self" => PidRef::SelfPid,
        digits => PidRef::Pid(std::str::from_utf8(digits).ok()?.parse().ok()?),
    };
    Some((pid, file))
}

/// Clock ticks (USER_HZ, 100 a second) in /proc's times.
const TICK_NS: u64 = 10_000_000;

/// A process's times as /proc reports them, in clock ticks.
struct Times {
    /// When it started, after the container's first call.
    start: u64,
    /// CPU time of its threads (counted as user time).
    cpu: u64,
    /// CPU time of its reaped children.
    children: u64,
}

/// A process's memory as /proc reports it, in bytes.
struct Sizes {
    /// Every page it can touch: present pages, reservations not yet mapped (PROT_NONE), and
    /// the part of its 8 MiB stack not touched yet.
    virtual_size: u64,
    resident: u64,
    /// Resident pages of shared memory (anonymous or a file's).
    shared: u64,
    /// The heap and private memory mapped by mmap.
    data: u64,
    stack: u64,
    /// Shared libraries' code mappings.
    libraries: u64,
}

impl Sizes {
    fn of(m: &dyn Machine, p: &crate::syscalls::Proc, space: crate::machine::SpaceId) -> Sizes {
        use crate::elf::{STACK_SIZE, STACK_TOP, USER_END};
        use crate::syscalls::Backing;
        let resident = m.resident_bytes(space, 0, USER_END);
        let stack_resident = m.resident_bytes(space, STACK_TOP - STACK_SIZE, STACK_TOP);
        let (mut reserved, mut shared, mut data, mut libraries) = (0, 0, 0, 0);
        for (start, end, present, backing) in p.vm.regions_with_presence() {
            let len = end - start;
            if !present {
                reserved += len;
            }
            match backing {
                b if b.shared() && present => shared += len,
                Backing::Data => data += len,
                Backing::LibraryCode => libraries += len,
                _ => {}
            }
        }
        Sizes {
            virtual_size: resident + reserved + STACK_SIZE.saturating_sub(stack_resident),
            resident,
            shared,
            data: data + p.brk_mapped.saturating_sub(p.brk_start),
            stack: STACK_SIZE,
            libraries,
        }
    }
}

/// One process as /proc shows it.
struct ProcView<'a> {
    p: &'a crate::syscalls::Proc,
    tid: i64,
    sigmask: u64,
    /// R running, S waiting, T stopped, Z zombie.
    state: char,
    threads: usize,
}

impl ProcView<'_> {
    fn file(&self, name: &[u8], sizes: &Sizes, times: &Times) -> Option<Vec<u8>> {
        let p = self.p;
        let comm = String::from_utf8_lossy(&p.comm).into_owned();
        let text = match name {
            b"status" => {
                let c = &p.cred;
                let groups: Vec<String> = c.groups.iter().map(|g| g.to_string()).collect();
                let state = match self.state {
                    'R' => "R (running)",
                    'T' => "T (stopped)",
                    'Z' => "Z (zombie)",
                    _ => "S (sleeping)",
                };
                format!(
                    "Name:\t{comm}\nState:\t{state}\nTgid:\t{}\nPid:\t{}\nPPid:\t{}\n\
                     Uid:\t{}\t{}\t{}\t{}\nGid:\t{}\t{}\t{}\t{}\nGroups:\t{}\n\
                     VmPeak:\t{:8} kB\nVmSize:\t{:8} kB\nVmHWM:\t{:8} kB\nVmRSS:\t{:8} kB\n\
                     RssShmem:\t{:8} kB\nVmData:\t{:8} kB\nVmStk:\t{:8} kB\nVmLib:\t{:8} kB\n\
                     Threads:\t{}\nSigBlk:\t{:016x}\nCpus_allowed:\t1\n\
                     Cpus_allowed_list:\t0\n",
                    p.pid,
                    self.tid,
                    p.ppid,
                    c.uid,
                    c.euid,
                    c.suid,
                    c.euid,
                    c.gid,
                    c.egid,
                    c.sgid,
                    c.egid,
                    groups.join(" "),
                    sizes.virtual_size >> 10,
                    sizes.virtual_size >> 10,
                    sizes.resident >> 10,
                    sizes.resident >> 10,
                    sizes.shared >> 10,
                    sizes.data >> 10,
                    sizes.stack >> 10,
                    sizes.libraries >> 10,
                    self.threads,
                    self.sigmask
                )
            }
            // Linux's 52 fields: pid, comm, state, ppid, pgrp, session, tty, tpgid, then
            // from field 9 on (fields[n - 9]) flags, fault counters (not kept: 0), CPU time
            // (as user time) and its children's, priority, nice, threads, start time, sizes,
            // the rest 0.
            b"stat" => {
                let mut fields = vec!["0".to_string(); 52 - 8];
                fields[18 - 9] = "20".into(); // priority
                fields[20 - 9] = self.threads.to_string();
                fields[14 - 9] = times.cpu.to_string(); // utime
                fields[16 - 9] = times.children.to_string(); // cutime
                fields[22 - 9] = times.start.to_string();
                fields[23 - 9] = sizes.virtual_size.to_string();
                fields[24 - 9] = (sizes.resident / 4096).to_string();
                fields[25 - 9] = u64::MAX.to_string(); // rsslim: unlimited
                format!(
                    "{} ({comm}) {} {} {} {} 0 -1 {}\n",
                    p.pid,
                    self.state,
                    p.ppid,
                    p.pgid,
                    p.sid,
                    fields.join(" ")
                )
            }
            // Pages: size, resident, shared, text, 0, data + stack, 0.
            b"statm" => format!(
                "{} {} {} 0 0 {} 0\n",
                sizes.virtual_size / 4096,
                sizes.resident / 4096,
                sizes.shared / 4096,
                (sizes.data + sizes.stack) / 4096
            ),
            b"comm" => format!("{comm}\n"),
            b"cmdline" => return Some(p.cmdline.clone()),
            _ => return None,
        };
        Some(text.into_bytes())
    }
}

/// What `/proc/self/fd/N` points at, as Linux names it.
fn fd_target(kind: &FileKind) -> Vec<u8> {
    let text = match kind {
        FileKind::Host { path, .. } => return path.clone(),
        FileKind::Stdin | FileKind::Stdout | FileKind::Stderr => "/dev/console".to_string(),
        FileKind::Null => "/dev/null".to_string(),
        FileKind::Zero => "/dev/zero".to_string(),
        FileKind::Random => "/dev/urandom".to_string(),
        FileKind::Socket(s) => format!("socket:[{}]", 10_000 + u64::from(*s)),
        FileKind::Unix { rx, .. } => format!("socket:[{}]", 20_000 + u64::from(*rx)),
        FileKind::UnixNamed(id) => format!("socket:[{}]", 40_000 + u64::from(*id)),
        FileKind::PipeRead(id) | FileKind::PipeWrite(id) => format!("pipe:[{}]", 30_000 + id),
        FileKind::Epoll(_) => "anon_inode:[eventpoll]".to_string(),
        FileKind::EventFd(_) => "anon_inode:[eventfd]".to_string(),
        FileKind::TimerFd(_) => "anon_inode:[timerfd]".to_string(),
        FileKind::SignalFd(_) => "anon_inode:[signalfd]".to_string(),
        FileKind::Generated(_) => "/proc".to_string(),
    };
    text.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dirents_are_aligned_records_pointing_at_the_next() {
        let d = dirents(&[(1, DT_DIR, b".".to_vec()), (7, DT_LNK, b"12".to_vec())]);
        assert_eq!(d.len(), 48);
        assert_eq!(u16::from_le_bytes([d[16], d[17]]), 24);
        assert_eq!(i64::from_le_bytes(d[8..16].try_into().unwrap()), 24);
        assert_eq!(&d[24 + 19..24 + 22], b"12\0");
    }

    #[test]
    fn the_own_pid_is_self() {
        assert_eq!(as_self(b"/proc/5/status", 5), b"/proc/self/status");
        assert_eq!(as_self(b"/proc/5", 5), b"/proc/self");
        assert_eq!(as_self(b"/proc/51/status", 5), b"/proc/51/status");
    }
}
