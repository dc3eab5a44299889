//! The process model with Debian's busybox, unmodified: fork, vfork, exec (ELF and `#!`),
//! wait statuses, pipes, SIGPIPE, process groups; every program in its own address space in
//! the container's one VM. Outputs are compared with the same busybox run on the host.

mod common;

use std::process::Command;

use common::*;

/// Runs `script` with busybox sh in a container; (exit status, stdout, stderr).
fn sh(script: &str) -> (Option<i32>, String, String) {
    let o = qvisor(&["sh", "-c", script]);
    (o.status.code(), stdout(&o), stderr(&o))
}

/// The same script with the host's busybox, in the test root's copy of it (the reference).
fn host_sh(script: &str) -> String {
    let o = Command::new("/bin/busybox")
        .args(["sh", "-c", script])
        .env("PATH", "/bin")
        .current_dir(root())
        .output()
        .unwrap();
    stdout(&o)
}

#[test]
fn a_pipeline_of_three_programs() {
    let (code, out, err) = sh("seq 1 100000 | sort -rn | head -3");
    assert_eq!(
        (code, out.as_str()),
        (Some(0), "100000\n99999\n99998\n"),
        "{err}"
    );
}

#[test]
fn exit_statuses_reach_the_shell() {
    let script = "/bin/false; echo $?; (exit 7); echo $?; sh -c 'exit 9'; echo $?; \
                  no-such-program 2>/dev/null; echo $?; sh -c 'kill -9 $$'; echo $?; \
                  sh -c 'kill -TERM $$'; echo $?";
    let (code, out, err) = sh(script);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out, "1\n7\n9\n127\n137\n143\n", "{err}");
}

#[test]
fn command_substitution_subshells_and_functions() {
    // A 200-line script: functions, subshells, command substitution, pipes, loops.
    let mut script = String::from("set -e\ncount=0\n");
    script += "square() { echo $(( $1 * $1 )); }\n";
    script += "words() { echo \"$@\" | tr ' ' '\\n' | wc -l; }\n";
    for i in 0..60 {
        script += &format!("v{i}=$(square {i}); count=$((count + v{i}))\n");
        script += &format!("( echo sub {i} ) | tr a-z A-Z\n");
        script += &format!("[ $(words a b c {i}) -eq 4 ] || echo bad {i}\n");
    }
    script += "echo total $count\n";
    script += "for f in $(ls bin | sort | head -5); do echo bin $f; done\n";
    assert!(script.lines().count() >= 180);
    std::fs::write(root().join("data/long.sh"), &script).unwrap();
    let o = qvisor(&["sh", "/data/long.sh"]);
    let expected = host_sh("sh data/long.sh");
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stdout(&o).contains("total 70210"), "{}", stdout(&o));
    assert_eq!(stdout(&o), expected);
}

#[test]
fn find_walks_the_root_like_the_host_does() {
    let (code, out, err) = sh("find / -name '*.txt' | sort");
    let host = host_sh("find . -name '*.txt' | sed 's|^\\.||' | sort");
    assert_eq!(code, Some(0), "{err}");
    assert!(!out.is_empty());
    assert_eq!(out, host);
}

#[test]
fn a_script_runs_through_its_shebang() {
    let script = root().join("data/hello.sh");
    std::fs::write(&script, "#!/bin/sh\necho script $0 got $1\n").unwrap();
    let mut perm = std::fs::metadata(&script).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o755);
    std::fs::set_permissions(&script, perm).unwrap();
    let (code, out, err) = sh("/data/hello.sh one; echo status $?");
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out, "script /data/hello.sh got one\nstatus 0\n");
}

#[test]
fn a_writer_without_readers_dies_of_sigpipe() {
    // yes writes until head has gone; the pipeline's status is head's.
    let (code, out, err) = sh("yes | head -2; echo done");
    assert_eq!((code, out.as_str()), (Some(0), "y\ny\ndone\n"), "{err}");
}

#[test]
fn processes_have_ids_parents_and_groups() {
    let (code, out, err) = sh("echo $$ $PPID; sh -c 'echo $$ $PPID'; true");
    assert_eq!(code, Some(0), "{err}");
    let ids: Vec<i64> = out.split_whitespace().map(|v| v.parse().unwrap()).collect();
    assert_eq!(ids[0], 1, "the container's init: {out}");
    assert_eq!(ids[1], 0);
    assert!(ids[2] > 1, "a child has its own pid: {out}");
    assert_eq!(ids[3], 1, "its parent is init: {out}");
}

#[test]
fn memory_written_by_a_child_stays_its_own() {
    // The child's variable changes in its own copy; the parent's stays.
    let (code, out, err) = sh("x=parent; (x=child; echo in $x); echo out $x");
    assert_eq!(
        (code, out.as_str()),
        (Some(0), "in child\nout parent\n"),
        "{err}"
    );
}

#[test]
fn kill_ends_other_processes_and_spares_init() {
    // A background job killed before it ran, one blocked on a pipe, a group, and init asking
    // to be killed by another process (ignored: init has no handler).
    let script = "sleep 10 & kill $!; wait $!; echo job $?; \
                  (echo x; sleep 5) | (read l; sleep 5) & p=$!; kill -9 $p; wait $p; echo pipe $?; \
                  sh -c 'kill -TERM 1; echo init lives'; kill -0 12345; echo none $?";
    let (code, out, err) = sh(script);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out, "job 143\npipe 137\ninit lives\nnone 1\n", "{err}");
}

#[test]
fn shell_traps_run_and_background_jobs_are_waited_for() {
    // trap runs a handler (signals from itself and from a child); `wait` sleeps in
    // sigsuspend until SIGCHLD's handler runs.
    let script = "trap 'echo got TERM' TERM; kill -TERM $$; echo after; \
                  trap 'echo got USR1' USR1; sh -c 'kill -USR1 $PPID'; \
                  true & wait; echo waited $?; (exit 6) & wait $!; echo job $?";
    let (code, out, err) = sh(script);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out, "got TERM\nafter\ngot USR1\nwaited 0\njob 6\n", "{err}");
}

#[test]
fn background_jobs_run_while_the_shell_sleeps() {
    // Sleeps park their process: the jobs run meanwhile, and sleeps overlap.
    let started = std::time::Instant::now();
    let (code, out, err) =
        sh("(sleep 0.4; echo late) & (echo now) & sleep 0.2; echo fg; wait; echo done");
    let took = started.elapsed();
    assert_eq!(
        (code, out.as_str()),
        (Some(0), "now\nfg\nlate\ndone\n"),
        "{err}"
    );
    assert!(took < std::time::Duration::from_millis(3000), "{took:?}");
}

#[test]
fn a_busy_process_is_preempted() {
    // yes never waits: only the preemption timer lets the sleeping shell run again to kill it.
    // The shared root is built first: its C guests take seconds to compile, not the run.
    root();
    let started = std::time::Instant::now();
    let (code, out, err) = sh("yes > /dev/null & sleep 0.1; kill $!; wait $!; echo killed $?");
    assert_eq!((code, out.as_str()), (Some(0), "killed 143\n"), "{err}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    // Two busy loops share the vCPU and both finish.
    let loop_ = "i=0; while [ $i -lt 5000 ]; do i=$((i+1)); done";
    let (code, out, err) = sh(&format!(
        "({loop_}; echo a) & ({loop_}; echo b) & wait; echo both"
    ));
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.ends_with("both\n") && out.contains("a\n") && out.contains("b\n"),
        "{out}"
    );
}

#[test]
fn proc_tells_memory_the_cpu_and_the_process_itself() {
    let (code, out, err) = sh("head -1 /proc/meminfo; head -1 /proc/cpuinfo; \
         cat /proc/self/status | head -5; cat /proc/self/comm; cat /proc/nope");
    assert_eq!(code, Some(1), "{err}");
    let lines: Vec<&str> = out.lines().collect();
    // launch gives the guest 512 MiB.
    assert_eq!(
        lines[0].split_whitespace().collect::<Vec<_>>(),
        ["MemTotal:", "524288", "kB"]
    );
    assert!(lines[1].starts_with("processor\t: 0"), "{out}");
    assert_eq!(lines[2], "Name:\tcat");
    assert!(lines.contains(&"PPid:\t1"), "{out}");
    assert_eq!(lines.last(), Some(&"cat"));
    assert!(err.contains("/proc/nope"), "{err}");
}

/// The number after `key` in /proc/PID/status text.
fn status_kb(status: &str, key: &str) -> u64 {
    let line = status
        .lines()
        .find(|l| l.starts_with(key))
        .unwrap_or_else(|| panic!("{key}: {status}"));
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn proc_reports_memory_sizes_times_and_counts_that_follow_the_processes() {
    // The shell's resident memory grows by what it keeps (a 2 MB variable), seen from a
    // child (the shell parked) and from itself; statm and stat agree with status; uptime,
    // loadavg, stat and sysinfo (busybox free) are the container's.
    let script = "cat /proc/$$/status; echo ---; x=$(seq 1 300000); cat /proc/$$/status; \
                  echo ---; cat /proc/$$/statm; echo ---; cat /proc/$$/stat; echo ---; \
                  cat /proc/uptime /proc/loadavg; grep -c cpu0 /proc/stat; echo ---; free";
    let (code, out, err) = sh(script);
    assert_eq!(code, Some(0), "{err}");
    let parts: Vec<&str> = out.split("---\n").collect();
    let (before, after) = (parts[0], parts[1]);
    let (rss0, rss1) = (status_kb(before, "VmRSS:"), status_kb(after, "VmRSS:"));
    assert!(rss0 > 500, "a shell is more than nothing: {before}");
    assert!(rss1 >= rss0 + 1500, "2 MB kept shows: {rss0} -> {rss1} kB");
    assert!(
        status_kb(after, "VmSize:") >= rss1 + 8000,
        "the stack reservation counts"
    );
    let statm: Vec<u64> = parts[2]
        .split_whitespace()
        .map(|v| v.parse().unwrap())
        .collect();
    assert_eq!(
        statm[1] * 4,
        status_kb(after, "VmRSS:"),
        "statm resident, in pages"
    );
    assert_eq!(statm[0] * 4, status_kb(after, "VmSize:"));
    let stat: Vec<&str> = parts[3].split_whitespace().collect();
    assert_eq!(stat.len(), 52, "Linux's field count: {}", parts[3]);
    assert_eq!(stat[19], "1", "one thread");
    assert_eq!(
        stat[22].parse::<u64>().unwrap(),
        statm[0] * 4096,
        "vsize in bytes"
    );
    assert_eq!(stat[23].parse::<u64>().unwrap(), statm[1], "rss in pages");
    let times: Vec<&str> = parts[4].lines().collect();
    let uptime: f64 = times[0].split_whitespace().next().unwrap().parse().unwrap();
    assert!(
        uptime < 60.0,
        "the container's uptime, not the host's: {uptime}"
    );
    assert!(times[1].starts_with("0.00 0.00 0.00 "), "{}", times[1]);
    assert_eq!(times[2], "1", "one CPU in /proc/stat");
    let mem: Vec<&str> = parts[5]
        .lines()
        .nth(1)
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(
        mem[1], "524288",
        "sysinfo's total is the guest's memory: {}",
        parts[5]
    );
    let used: u64 = mem[2].parse().unwrap();
    assert!(
        used > 1000 && used < 100_000,
        "used memory is measured, not made up: {used}"
    );
}

#[test]
fn ps_lists_the_container_processes_from_proc() {
    // /proc lists every process; ps reads each one's stat and status. The background sleep is
    // a child of the shell (init), and ps itself is there too. The shell waits until the job
    // has exec'd sleep: until then it is a copy of the shell (as on Linux).
    let (code, out, err) = sh(
        "sleep 5 & until busybox grep -q sleep /proc/$!/cmdline; do :; done; \
         busybox ps; kill $!; busybox cat /proc/1/status; exit 0",
    );
    assert_eq!(code, Some(0), "{err}");
    let rows: Vec<Vec<&str>> = out
        .lines()
        .skip(1)
        .take_while(|l| !l.starts_with("Name:"))
        .map(|l| l.split_whitespace().collect())
        .collect();
    // COMMAND is each one's arguments.
    assert!(rows.iter().any(|r| r[0] == "1" && r[2] == "sh"), "{out}");
    assert!(rows.iter().any(|r| r[2..] == ["sleep", "5"]), "{out}");
    assert!(rows.iter().any(|r| r[2..] == ["busybox", "ps"]), "{out}");
    assert!(out.contains("Name:\tsh\nState:\tS (sleeping)\n"), "{out}");
}

#[test]
fn proc_self_fd_lists_and_links_the_open_descriptors_and_maps_names_the_stack() {
    // ls lists its own /proc/self/fd: 0-2, the directory it reads, and 5 and 7 that the shell
    // opened for it; readlink names a file of the root by its path.
    let (code, out, err) = sh(
        "exec 5</data/lines.txt 7</dev/null; ls /proc/self/fd | tr '\\n' ' '; \
         echo; busybox readlink /proc/self/fd/5; busybox readlink /proc/self/fd/7; \
         head -1 /proc/self/fd/5; busybox grep -c stack /proc/self/maps",
    );
    assert_eq!(code, Some(0), "{err}");
    let lines: Vec<&str> = out.lines().collect();
    let fds: Vec<&str> = lines[0].split_whitespace().collect();
    for fd in ["0", "1", "2", "5", "7"] {
        assert!(fds.contains(&fd), "{out}");
    }
    assert_eq!(
        &lines[1..],
        ["/data/lines.txt", "/dev/null", "line 1", "1"],
        "{out}"
    );
}

#[test]
fn shared_anonymous_memory_is_one_memory_for_a_process_and_its_forks() {
    // MAP_SHARED | MAP_ANONYMOUS (and /dev/zero mapped shared): writes and atomic increments
    // from a child and a grandchild are the parent's; private memory stays private.
    prints_and_succeeds(
        "/bin/shared",
        "shared across fork: ok\n/dev/zero shared: ok\nmadvise keeps shared contents: ok\n\
         remapping: ok\n",
    );
}

#[test]
fn a_file_mapped_shared_is_one_memory_coherent_with_its_reads_and_writes_and_written_back() {
    // MAP_SHARED of a file: processes that map it on their own see each other's stores and
    // futexes at different addresses; read/pwrite/write/ftruncate agree with the mapping;
    // msync, munmap, a process's exit and the container's end write it back; access modes are
    // checked; /dev/shm works as POSIX shared memory; private read-only mappings share the
    // page cache's pages and see later writes. The same program passes natively.
    let file = format!("/data/mapfile-{}.bin", std::process::id());
    let o = qvisor(&["/bin/mapfile", &file]);
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    assert_eq!(
        stdout(&o),
        "one memory for every mapping, coherent with read and write: ok\n\
         atomic increments from two processes: ok\n\
         futex across two mappings of the file: ok\n\
         written back on msync, munmap and exit: ok\n\
         truncation: ok\naccess modes: ok\nshared memory in /dev/shm: ok\n\
         private read-only mappings: ok\n"
    );
    // Four processes each mapping 8 MiB of the file privately read-only share its pages:
    // about 8 MiB (and what their forks copied), not 32.
    let used_kib: u64 = stderr(&o)
        .lines()
        .find_map(|l| l.strip_prefix("memory for 4 x 8 MiB private read-only: "))
        .and_then(|v| v.strip_suffix(" KiB")?.parse().ok())
        .unwrap_or_else(|| panic!("no memory figure: {}", stderr(&o)));
    assert!(
        (8 << 10..20 << 10).contains(&used_kib),
        "4 x 8 MiB mapped read-only took {used_kib} KiB"
    );
    let host = std::fs::read(root().join(&file[1..])).unwrap();
    std::fs::remove_file(root().join(&file[1..])).unwrap();
    assert_eq!(host.len(), 4096 + 100, "the mapping never grows the file");
    assert_eq!(
        &host[..12],
        b"left at exit",
        "the container's end writes the mapping back"
    );
    assert_eq!(&host[100..105], b"child");
}

#[test]
fn named_unix_datagram_sockets_deliver_datagrams_with_their_senders_names() {
    // socket(AF_UNIX, SOCK_DGRAM) bound to paths and an abstract name: sendto/recvfrom with
    // names (an unbound sender's address length 0), connect + send/write/writev, readv,
    // getpeername/getsockname, MSG_TRUNC both ways, a receive waiting for another process's
    // send, poll, ENOENT, ENOTCONN, EOPNOTSUPP for listen, EPERM from a stranger to a
    // connected socket, EAGAIN on a full queue. The same program passes natively.
    prints_and_succeeds_with(
        &["/bin/unixdgram", "/tmp"],
        "sendto and recvfrom with names: ok\nconnect, write, writev and readv: ok\n\
         boundaries and truncation: ok\nwaits and poll: ok\nerrors: ok\nabstract names: ok\n",
    );
}

#[test]
fn cpu_time_counts_what_a_process_computes_and_reaches_its_parent() {
    // CLOCK_PROCESS_CPUTIME_ID, CLOCK_THREAD_CPUTIME_ID and getrusage count 0.3 s of computing
    // and not the 0.4 s sleep after it (they were the monotonic clock); a reaped child's time
    // reaches the parent through wait4's rusage, RUSAGE_CHILDREN and times(2); the clocks
    // clock_getcpuclockid and pthread_getcpuclockid name read a living child's and another
    // thread's CPU time (ESRCH once the child is reaped). The same
    // program passes natively.
    prints_and_succeeds(
        "/bin/cputime",
        "computing counts, sleeping does not: ok\na reaped child's time is the parent's: ok\n\
         clocks by process and thread id: ok\n",
    );
}

#[test]
fn interval_timers_signal_a_process_idle_blocked_or_computing() {
    // alarm/setitimer and timer_create timers: SIGALRM ends pause and a pipe read (EINTR),
    // a periodic timer fires while the process computes (no syscalls), the default action
    // kills a child, a fork child has no timers, exec keeps ITIMER_REAL; POSIX timers carry
    // SI_TIMER and their value (expiries while the signal is blocked add to its overrun, not
    // to the signals queued), SIGEV_THREAD_ID reaches its thread, SIGEV_NONE stays quiet,
    // an absolute CLOCK_REALTIME time is honoured; ITIMER_PROF, ITIMER_VIRTUAL and timers on
    // the process's and the thread's CPU clocks count CPU time, not sleep. The same program
    // passes natively.
    prints_and_succeeds(
        "/bin/timers",
        "alarm and pause: ok\nperiodic timer while computing: ok\n\
         a blocking read interrupted: ok\ndefault action kills, fork child has none: ok\n\
         exec keeps ITIMER_REAL: ok\nposix timers: ok\nthread-directed timer: ok\n\
         cpu-time timers: ok\n",
    );
}

#[test]
fn ppoll_pselect_and_epoll_pwait_wait_under_their_own_signal_mask() {
    // For each call: a signal the caller blocks and the call's mask lets through interrupts
    // it (EINTR, the handler ran, the caller's mask is back after), or ends it at once when
    // already pending; one the call's mask blocks lets the wait time out and runs right
    // after; a mask of 4 bytes is EINVAL, a bad pointer EFAULT. The same program passes
    // natively. Alone, the calls wait in place; beside a second thread, parked.
    let all_ok = "ppoll: ok\npselect6: ok\nepoll_pwait: ok\nepoll_pwait2: ok\n";
    prints_and_succeeds("/bin/sigmask", all_ok);
    prints_and_succeeds_with(&["/bin/sigmask", "threaded"], all_ok);
}

#[test]
fn timerfds_count_expiries_and_wake_reads_polls_and_epoll() {
    // One-shot and periodic, relative and absolute (CLOCK_REALTIME); EAGAIN while nothing
    // expired, a blocking read, poll and epoll_wait each wake at the expiry; gettime; bad
    // clocks, flags, buffers, writes and settime on a pipe refused. Alone, and beside a
    // second thread (waits parked). The same program passes natively.
    prints_and_succeeds("/bin/timerfd", "timerfd: ok\n");
    prints_and_succeeds_with(&["/bin/timerfd", "threaded"], "timerfd: ok\n");
}

#[test]
fn blocked_signals_wait_and_sigtimedwait_takes_them() {
    // As container inits (tini, dumb-init) use them: a blocked SIGTERM without a handler
    // waits instead of killing, SIGCHLD is kept though ignored by default, sigtimedwait takes
    // them with their siginfo, times out with EAGAIN, wakes at a child's exit, is interrupted
    // by a handled signal outside its set; a pending SIGUSR1 kills once unblocked. The same
    // program passes natively.
    prints_and_succeeds("/bin/sigwait", "sigwait: ok\n");
}

#[test]
fn hard_links_symlinks_close_range_and_named_semaphores_work() {
    // link/linkat (AT_SYMLINK_FOLLOW too), symlink/symlinkat (relative, absolute, dangling),
    // close_range (closing, CLOSE_RANGE_CLOEXEC), a sem_open semaphore posted by a child
    // (glibc makes it in /dev/shm with link); errors. Passes natively too.
    prints_and_succeeds_with(&["/bin/links", "/data/links"], "links: ok\n");
}

#[test]
fn rlimit_nofile_bounds_descriptors_and_limits_pass_to_children() {
    // RLIMIT_NOFILE lowered: EMFILE at it, dup2 and F_DUPFD past it refused; a fork child
    // inherits it and prlimit reads it from the parent; raised again; EINVAL cases. Passes
    // natively too.
    prints_and_succeeds("/bin/rlimits", "rlimits: ok\n");
}

#[test]
fn memfd_files_read_write_map_and_share_with_a_child() {
    // memfd_create: read, write, ftruncate, a shared mapping that sees a forked child's
    // pwrite, its /proc name, listed nowhere, F_SEAL_SEAL, errors. Passes natively too.
    prints_and_succeeds("/bin/memfd", "memfd: ok\n");
}

#[test]
fn advisory_locks_work_between_processes() {
    // fcntl record locks (conflicts, F_GETLK, shared read locks, SEEK_CUR/SEEK_END ranges,
    // F_SETLKW waiting for the holder's unlock, release on any close and on exit), OFD locks
    // owned by the open file, flock apart from record locks, errors. Passes natively too.
    prints_and_succeeds("/bin/locks", "locks: ok\n");
}

#[test]
fn signalfd_reads_blocked_signals_and_wakes_polls() {
    // Records with sender, status and code; EAGAIN; a blocking read woken by another
    // process; poll, select and an epoll_wait woken by a child's exit; a new mask; a thread
    // blocked in a read taking a process-directed signal; a timer's signal; errors. Alone, it
    // waits in place; with a child or a second thread, parked. Passes natively too.
    prints_and_succeeds("/bin/signalfd", "signalfd: ok\n");
}

#[test]
fn catatonit_runs_as_init_and_passes_signals_on() {
    // podman's init (`podman run --init`) waits on a signalfd with epoll.
    an_init_passes_on_exit_status_and_signals("/bin/catatonit");
}

#[test]
fn tini_runs_as_init_and_passes_signals_on() {
    // Debian's tini (docker run --init, many images' entrypoint) blocks the signals it
    // handles and takes them in sigtimedwait.
    an_init_passes_on_exit_status_and_signals("/bin/tini");
}

/// `init -- sh -c ...` as the container's first process: its child's exit status becomes the
/// container's, and a SIGTERM sent to it (pid 1) reaches the child's trap.
fn an_init_passes_on_exit_status_and_signals(init: &str) {
    let o = qvisor(&[init, "--", "sh", "-c", "echo under init; exit 3"]);
    assert_eq!(
        (o.status.code(), stdout(&o).as_str()),
        (Some(3), "under init\n"),
        "{}",
        stderr(&o)
    );
    let trap = "trap 'echo bye; exit 7' TERM; echo set; kill -TERM 1; \
                while true; do sleep 1; done";
    let o = qvisor(&[init, "--", "sh", "-c", trap]);
    assert_eq!(
        (o.status.code(), stdout(&o).as_str()),
        (Some(7), "set\nbye\n"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn a_robust_lock_whose_owner_died_goes_to_the_next_locker_with_eownerdead() {
    // The owner a thread that exits, a process that exits, a process killed (SIGKILL from a
    // third one) while the test's process waits for the lock in shared memory, and a process
    // that execs holding it.
    prints_and_succeeds(
        "/bin/robust",
        "thread died holding it: EOWNERDEAD\nprocess exited holding it: EOWNERDEAD\n\
         owner killed while another process waited: EOWNERDEAD\n\
         owner exec'd holding it: EOWNERDEAD\n",
    );
}

#[test]
fn datagram_and_seqpacket_socket_pairs_keep_message_boundaries() {
    // Sends of 5, 0, 100 and 4 bytes come back as four receives (the 100 cut to a 64-byte
    // buffer with MSG_TRUNC, its rest dropped), writev/readv are one message, an oversized
    // datagram is EMSGSIZE; a stream pair still merges. The same program passes natively.
    prints_and_succeeds(
        "/bin/dgram",
        "dgram: boundaries kept\nseqpacket: boundaries kept\nstream: bytes merged\n\
         named seqpacket: boundaries kept\n",
    );
}
