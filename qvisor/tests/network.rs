//! Guest networking against real KVM: the guest's sockets served by the qnet stack inside
//! qvisor, reached by kernel peers (python, nc) in namespaces the tests create.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

#[test]
fn a_guest_tcp_client_reaches_a_kernel_server_through_qnet() {
    let ns = Netns::new("cli");
    // The kernel side: a python server that answers once, started after the TAP exists.
    let server = r#"
import socket, time
for _ in range(100):
    try:
        l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        l.bind(("10.66.0.1", 7070)); break
    except OSError:
        time.sleep(0.05)
l.listen(1)
c, a = l.accept()
data = b""
while True:
    d = c.recv(100)
    if not d: break
    data += d
c.sendall(b"kernel got: " + data)
c.close()
"#;
    let mut py = ns.sh(&format!("python3 -c '{server}'"));
    let opts = net_options(&ns);
    let mut args: Vec<&str> = opts.iter().map(String::as_str).collect();
    args.extend(["/bin/tcp", "client", "10.66.0.1", "7070"]);
    // The server binds once the TAP (created by qvisor) has its address: retry the client.
    let mut last = None;
    for _ in 0..20 {
        let o = qvisor_with(&args[..args.len() - 4], &args[args.len() - 4..]);
        if o.status.code() == Some(0) {
            last = Some(o);
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        last = Some(o);
    }
    let o = last.unwrap();
    let _ = py.kill();
    let _ = py.wait();
    assert_eq!(
        stdout(&o),
        "reply: kernel got: ping from the guest\n",
        "{}",
        stderr(&o)
    );
}

#[test]
fn select_waits_for_what_the_app_asked_and_reports_only_what_is_ready() {
    // Loopback in the guest: without a pod namespace, qnet serves loopback only.
    let o = qvisor(&["/bin/select"]);
    assert_eq!(stdout(&o), "ok\n", "{}", stderr(&o));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
}

#[test]
fn socket_io_with_bad_buffers_is_efault_and_loses_nothing() {
    // A stream's bytes go between qnet's ring and the app's buffers with no copy between:
    // reads (read, recv, readv) into NULL, the kernel half and the syscall stub's page, and
    // writes (write, send, writev, sendmsg) from NULL and the kernel half, are EFAULT and move
    // nothing; a buffer running into an unmapped page moves what comes before it (or EFAULT,
    // as Linux may); readv/recvmsg scatter and writev/sendmsg gather in order; everything
    // arrives intact and in order both ways. A pipe's and a socket pair's bytes stay in them
    // when a read's buffer is bad. Passes natively too.
    let o = qvisor(&["/bin/sockio"]);
    assert_eq!(
        stdout(&o),
        "reads: bad buffers refused, 262144 bytes intact\n\
         writes: bad buffers refused, 26020 bytes intact\n\
         pipes: bad buffers refused, bytes kept\n",
        "{}",
        stderr(&o)
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
}

/// The stub's count of the socket reads it served, from the end-of-container debug line.
/// The socket reads and writes the stub served, from qvisor's debug log.
fn stub_socket_io(o: &std::process::Output) -> u64 {
    let err = stderr(o);
    err.lines()
        .find_map(|l| l.split("stub_socket_io=").nth(1))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no stub_socket_io count in the debug log: {err}"))
}

#[test]
fn socket_reads_served_in_the_stub_keep_linux_semantics() {
    // qvisor/src/fastread.rs: reads of a stream with data waiting are copied from the ring by
    // the syscall stub. The guest checks every byte of a 24 MiB stream read in pieces of 1
    // byte to 200 KiB, bad buffers (EFAULT, nothing lost), a forked child reading a stretch,
    // dup2 of another connection over the descriptor and back, a reused descriptor number,
    // O_NONBLOCK and EAGAIN, and the end of the stream (see the program). Statically linked
    // (`syscall` instructions) and dynamically (libc's patched sites jump into the stub); and
    // with the kill switch, which leaves every read to qkernel.
    let expected = format!("fast reads: {} bytes intact\n", 24 << 20);
    for program in ["/bin/fastread", "/bin/fastread-dyn"] {
        let o = common::qvisor_env(&[("QVISOR_LOG", "qvisor=debug")], &[program]);
        assert_eq!(stdout(&o), expected, "{program}: {}", stderr(&o));
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        let served = stub_socket_io(&o);
        assert!(served > 100, "{program}: the stub served {served} reads");
    }
    let o = common::qvisor_env(
        &[("QVISOR_LOG", "qvisor=debug"), ("QUARK_FAST_READS", "off")],
        &["/bin/fastread"],
    );
    assert_eq!(stdout(&o), expected, "{}", stderr(&o));
    assert_eq!(stub_socket_io(&o), 0, "the kill switch");
    // Six streams at once in a 24 MiB container, which may read 3 rings in the stub (half
    // its buffer budget): the others are read through qkernel, every byte intact.
    let o = common::qvisor_env(
        &[("QVISOR_LOG", "qvisor=debug")],
        &["--memory-mib", "24", "/bin/fastread", "many"],
    );
    assert_eq!(
        stdout(&o),
        "many: 6 streams of 2097152 bytes intact\n",
        "{}",
        stderr(&o)
    );
    assert!(stderr(&o).contains("limit=3"), "{}", stderr(&o));
    assert!(stub_socket_io(&o) > 0);
}

#[test]
fn socket_writes_served_in_the_stub_keep_linux_semantics() {
    // Writes that fit a stream's transmit ring are copied into it by the syscall stub. A
    // forked reader checks every byte of a 24 MiB stream written in pieces of 1 byte to
    // 200 KiB; between them, bad buffers (EFAULT, nothing added), a forked child writing a
    // stretch, dup2 of another connection over the descriptor and back, a reused descriptor
    // number, a non-blocking socket nobody reads filled to EAGAIN and read back exactly,
    // EPIPE and SIGPIPE after SHUT_WR, a blocking write cut short by a signal returning the
    // part that went in, and every other blocking write whole while another process runs
    // (see the program). The reader reads 8 KiB at a time, which the stub leaves to qkernel,
    // so the stub's count is of writes alone. Static and patched-dynamic; then with each
    // kill switch.
    let expected = format!("fast writes: {} bytes intact\n", 24 << 20);
    for program in ["/bin/fastread", "/bin/fastread-dyn"] {
        let o = common::qvisor_env(&[("QVISOR_LOG", "qvisor=debug")], &[program, "writes"]);
        assert_eq!(stdout(&o), expected, "{program}: {}", stderr(&o));
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        let served = stub_socket_io(&o);
        assert!(served > 100, "{program}: the stub served {served} writes");
    }
    for switch in ["QUARK_FAST_WRITES", "QUARK_FAST_READS"] {
        let o = common::qvisor_env(
            &[("QVISOR_LOG", "qvisor=debug"), (switch, "off")],
            &["/bin/fastread", "writes"],
        );
        assert_eq!(stdout(&o), expected, "{switch}: {}", stderr(&o));
        assert_eq!(stub_socket_io(&o), 0, "{switch}=off");
    }
}

#[test]
fn a_guest_reading_the_whole_ring_window_commits_no_host_memory() {
    // The window through which the stub reads rings is mapped in every guest (64 rings of
    // 4 MiB here); where no socket's ring is, it is anonymous memory never written. A guest
    // that reads all 256 MiB of it reads zeros, and its VMM stays small.
    let (line, rss_kib, err) = first_line_and_vmm_rss(&[], &["/bin/ringpeek"]);
    assert_eq!(line, "read 65536 pages, 0 not zero\n", "{err}");
    assert!(rss_kib < 64 << 10, "the VMM holds {rss_kib} KiB");
}

/// Launches `args` (with qvisor `options` first), waits for the guest's first line of
/// output, and returns it with the VMM's resident memory (KiB) at that moment and qvisor's
/// stderr; the guest is killed then (it waits to be looked at).
fn first_line_and_vmm_rss(options: &[&str], args: &[&str]) -> (String, u64, String) {
    let options: Vec<String> = options.iter().map(|o| o.to_string()).collect();
    let mut vmm = spawn_guest(&options, args);
    let line = first_line(&mut vmm);
    let status = std::fs::read_to_string(format!("/proc/{}/status", vmm.id())).unwrap();
    let _ = vmm.kill();
    let out = vmm.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    (line, status_kib(&status, "VmRSS"), err)
}

#[test]
fn alarm_interrupts_a_lone_process_blocked_on_a_socket() {
    // A process alone in its container, blocked reading a socket with nothing to read and
    // then writing into a connection nobody reads, each time until alarm(2)'s handler (no
    // SA_RESTART): the read fails with EINTR, the write returns what went in. (Alone, the
    // wait used to be one host wait that the alarm never ended.) Passes natively too.
    prints_and_succeeds_with(
        &["/bin/fastread", "alone"],
        "alone: interrupted as on Linux\n",
    );
}

#[test]
fn a_guest_writing_its_transmit_window_holds_no_more_than_the_window() {
    // The window of transmit rings the stub writes is guest-writable everywhere; where no
    // socket's ring is, it is anonymous memory. A 64 MiB container may expose 8 rings (half
    // its buffer budget over 4 MiB receive rings), so its transmit window is 8 x 2 MiB: a
    // guest writing all of it holds that and no more, and one page beyond is a fault.
    let (line, rss_kib, err) =
        first_line_and_vmm_rss(&["--memory-mib", "64"], &["/bin/ringpeek", "write", "8"]);
    assert_eq!(line, "wrote 4096 pages, 0 wrong\n", "{err}");
    assert!(rss_kib < 48 << 10, "the VMM holds {rss_kib} KiB");
    let o = common::qvisor_env(&[], &["--memory-mib", "64", "/bin/ringpeek", "write", "9"]);
    assert!(
        stderr(&o).contains("page fault at 0xffffc00081000000"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn a_writer_nobody_reads_gets_sigpipe_as_on_linux() {
    // On a shut TCP connection and on a pipe without a reader: the default action kills the
    // writer, MSG_NOSIGNAL (send, sendto, sendmsg) gives EPIPE alone, a handler runs once a
    // write, SIG_IGN gives EPIPE, a blocked SIGPIPE stays pending until unblocked. Passes
    // natively too.
    let o = qvisor(&["/bin/sigpipe"]);
    assert_eq!(
        stdout(&o),
        "default action kills: ok\nMSG_NOSIGNAL: ok\nhandler: ok\nignored: ok\nblocked: ok\n",
        "{}",
        stderr(&o)
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
}

#[test]
fn socket_options_reach_qnet_and_read_back_as_on_linux() {
    // TCP_NODELAY and SO_KEEPALIVE set before connect or listen hold on the connection and
    // on what the listener accepts; SO_TYPE, SO_PROTOCOL, SO_DOMAIN, SO_ACCEPTCONN; buffer
    // sizes; short and bad buffers, read-only options, a value cut to the asked length;
    // SO_RCVTIMEO and SO_SNDTIMEO ending recv, read, accept and send with EAGAIN, alone and
    // from a second thread. Passes natively too.
    prints_and_succeeds("/bin/sockopts", "sockopts: ok\n");
}

#[test]
fn sendfile_copy_file_range_and_fallocate_behave_as_on_linux() {
    // A 3 MiB file sent whole over 127.0.0.1 to another process (the sender waits on a full
    // socket), through a pipe at the position and at an offset, into a non-blocking socket
    // until EAGAIN and a shut one (EPIPE); copy_file_range between files and within one;
    // fallocate growing, keeping the size, punching a hole a shared mapping sees, zeroing;
    // each call's errors. Passes natively too.
    prints_and_succeeds("/bin/sendfile", "sendfile: ok\n");
}

#[test]
fn af_inet6_sockets_work_over_the_ipv4_network() {
    // In the guest's loopback: a dual-stack [::] listener takes an IPv4 client (named
    // ::ffff:127.0.0.1), an AF_INET6 client reaches an IPv4-mapped address, a v6-only listener
    // binds beside an IPv4 one on the same port and never becomes ready (nginx's `listen 80;
    // listen [::]:80;`), and 2001:db8::1 is unreachable. The same program passes natively.
    let o = qvisor(&["/bin/ipv6"]);
    assert_eq!(
        stdout(&o),
        "dual-stack listener takes IPv4 clients: ok\nIPv4-mapped client: ok\n\
         v6-only listener beside an IPv4 one: ok\nother IPv6 addresses: unreachable\n",
        "{}",
        stderr(&o)
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
}

#[test]
fn a_guest_tcp_server_serves_a_kernel_client_through_qnet() {
    let ns = Netns::new("srv");
    let opts = net_options(&ns);
    let mut child = spawn_guest(&opts, &["/bin/tcp", "server", "8081"]);
    let line = first_line(&mut child);
    assert_eq!(line, "listening\n");
    // nc quits -q seconds after its input ends, reply or not: 3 s leaves room for a loaded
    // machine (1 s was too tight once in the full suite).
    let client = ns.sh("printf hello-guest | nc -q3 -w5 10.66.0.2 8081");
    let out = client.wait_with_output().unwrap();
    let o = child.wait_with_output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "pong to 10.66.0.1:hello-guest",
        "{}",
        stderr(&o)
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
}

#[test]
fn busybox_httpd_in_the_guest_serves_files_to_curl() {
    // httpd forks a child per connection, which inherits the accepted socket.
    let ns = Netns::new("httpd");
    let mut server = spawn_guest(
        &net_options(&ns),
        &["busybox", "httpd", "-f", "-p", "8082", "-h", "/data"],
    );
    let mut bodies = Vec::new();
    for _ in 0..100 {
        let o = ns
            .sh("curl -s -m 2 http://10.66.0.2:8082/lines.txt")
            .wait_with_output()
            .unwrap();
        if o.status.success() {
            bodies.push(String::from_utf8_lossy(&o.stdout).into_owned());
            if bodies.len() == 5 {
                break;
            }
        } else {
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
    let missing = ns
        .sh("curl -s -o /dev/null -w '%{http_code}' http://10.66.0.2:8082/nope")
        .wait_with_output()
        .unwrap();
    let _ = server.kill();
    let o = server.wait_with_output().unwrap();
    let want = std::fs::read_to_string(root().join("data/lines.txt")).unwrap();
    assert_eq!(bodies.len(), 5, "{}", stderr(&o));
    assert!(bodies.iter().all(|b| *b == want), "{bodies:?}");
    assert_eq!(String::from_utf8_lossy(&missing.stdout), "404");
}

#[test]
fn busybox_wget_in_the_guest_fetches_from_a_kernel_http_server() {
    let ns = Netns::new("wget");
    let www = std::env::temp_dir().join(format!("qvisor-www-{}", std::process::id()));
    std::fs::create_dir_all(&www).unwrap();
    std::fs::write(www.join("index.html"), "served by the kernel's python\n").unwrap();
    // Bound to any address, so it listens before qvisor creates the TAP and its address.
    let mut server = ns.sh(&format!(
        "exec python3 -m http.server 8000 --bind 0.0.0.0 -d {} 2>/dev/null",
        www.display()
    ));
    ns.wait_for_port("-Hltn", 8000);
    let opts = net_options(&ns);
    let mut args: Vec<&str> = opts.iter().map(String::as_str).collect();
    args.extend(["wget", "-O", "-", "http://10.66.0.1:8000/index.html"]);
    let o = qvisor(&args);
    let _ = server.kill();
    let _ = server.wait();
    let _ = std::fs::remove_dir_all(&www);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(
        stdout(&o),
        "served by the kernel's python\n",
        "{}",
        stderr(&o)
    );
}

#[test]
fn poll_reports_socket_readiness_in_the_guest() {
    let ns = Netns::new("poll");
    let opts = net_options(&ns);
    let mut child = spawn_guest(&opts, &["/bin/tcp", "pollserver", "8082"]);
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    for expect in ["idle poll: 0\n", "listening\n"] {
        line.clear();
        std::io::BufRead::read_line(&mut out, &mut line).unwrap();
        assert_eq!(line, expect);
    }
    // Connect, wait, then send: the guest sees the connection, then data, through poll.
    // -N: half-close after the input and wait for the guest's reply and close (-q1 gave the
    // reply one second, which a loaded suite run once exceeded).
    let client = ns.sh("(sleep 0.3; printf polled) | nc -N -w5 10.66.0.2 8082");
    let reply = client.wait_with_output().unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
    let o = child.wait_with_output().unwrap();
    assert_eq!(
        rest,
        "poll before accept: 1 POLLIN\nselect agrees: 1 readable\nwritable: 1 POLLOUT\npoll before read: 1 POLLIN\n",
        "{}",
        stderr(&o)
    );
    assert_eq!(
        String::from_utf8_lossy(&reply.stdout),
        "pong to 10.66.0.1:polled"
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
}

#[test]
fn an_epoll_server_in_the_guest_serves_many_kernel_clients_at_once() {
    let ns = Netns::new("epoll");
    let opts = net_options(&ns);
    let mut child = spawn_guest(&opts, &["/bin/epoll", "8083", "200"]);
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    assert_eq!(line, "listening\n");
    // 200 clients connect first, then each sends and reads its own echo.
    let clients = r#"
import socket
socks = [socket.create_connection(("10.66.0.2", 8083), timeout=10) for _ in range(200)]
ok = 0
for i, s in enumerate(socks):
    msg = b"client %d " % i * 20
    s.sendall(msg)
    got = b""
    while len(got) < len(msg):
        got += s.recv(65536)
    ok += got == msg
for s in socks:
    s.close()
print(ok)
"#;
    let py = ns.sh(&format!("python3 -c '{clients}'"));
    let res = py.wait_with_output().unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
    let o = child.wait_with_output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&res.stdout).trim(),
        "200",
        "{}",
        stderr(&o)
    );
    assert_eq!(rest, "served 200\n", "{}", stderr(&o));
    assert_eq!(o.status.code(), Some(0));
}

#[test]
fn udp_both_ways_between_the_guest_and_the_kernel() {
    let ns = Netns::new("udp");
    let opts = net_options(&ns);
    // Guest echo server, kernel client.
    let mut child = spawn_guest(&opts, &["/bin/udp", "echo", "5300", "3"]);
    let line = first_line(&mut child);
    assert_eq!(line, "bound\n");
    let client = r#"
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(5)
ok = 0
for i in range(3):
    msg = b"datagram %d" % i
    s.sendto(msg, ("10.66.0.2", 5300))
    ok += s.recvfrom(100)[0] == msg
print(ok)
"#;
    let out = ns
        .sh(&format!("python3 -c '{client}'"))
        .wait_with_output()
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "3",
        "{}",
        stderr(&o)
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));

    // Kernel echo server (bound to any address, so it exists before the TAP), guest client.
    let server = r#"
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 5301))
d, a = s.recvfrom(100)
s.sendto(d.upper(), a)
"#;
    let mut py = ns.sh(&format!("python3 -c '{server}'"));
    ns.wait_for_port("-Hlun", 5301);
    let mut args: Vec<&str> = opts.iter().map(String::as_str).collect();
    args.extend(["/bin/udp", "ask", "10.66.0.1", "5301"]);
    let o = qvisor(&args);
    let _ = py.wait();
    assert_eq!(
        stdout(&o),
        "QUESTION FROM THE GUEST from 10.66.0.1:5301\n",
        "{}",
        stderr(&o)
    );
}

#[test]
fn non_blocking_connect_reports_through_poll_and_so_error() {
    let ns = Netns::new("nbc");
    // A listener on any address for the success case; nothing on port 1 for the refusal.
    let mut server = ns.sh("exec python3 -c 'import socket,time; l=socket.socket(); l.bind((\"0.0.0.0\", 7400)); l.listen(); time.sleep(10)'");
    ns.wait_for_port("-Hltn", 7400);
    let opts = net_options(&ns);
    let run = |port: &str| {
        let mut args: Vec<&str> = opts.iter().map(String::as_str).collect();
        args.extend(["/bin/tcp", "nbconnect", "10.66.0.1", port]);
        qvisor(&args)
    };
    let ok = run("7400");
    let refused = run("1");
    let _ = server.kill();
    let _ = server.wait();
    assert_eq!(
        stdout(&ok),
        "connect EINPROGRESS, poll 1 POLLOUT, SO_ERROR 0\n",
        "{}",
        stderr(&ok)
    );
    assert_eq!(
        stdout(&refused),
        // Linux too reports a failed connect as writable with an error.
        "connect EINPROGRESS, poll 1 POLLOUT POLLERR/HUP, SO_ERROR Connection refused\n",
        "{}",
        stderr(&refused)
    );
}

#[test]
fn the_guest_reaches_its_own_address_inside_the_stack() {
    let ns = Netns::new("self");
    let opts = net_options(&ns);
    let mut args: Vec<&str> = opts.iter().map(String::as_str).collect();
    args.extend(["/bin/tcp", "loop", "10.66.0.2", "8091"]);
    let o = qvisor(&args);
    assert_eq!(
        stdout(&o),
        "over the guest's own stack from 10.66.0.2 (client bound the same)\n\
         FIONREAD 26, then FIONBIO read: EAGAIN\n\
         recvfrom 1 byte, address length 0; recvmsg 1 byte, name length 0\n",
        "{}",
        stderr(&o)
    );
}

/// A pod network made by Debian's reference CNI plugins as a kubelet would: the plugin runs in
/// a "node" namespace (where it puts the bridge or host-side veth) and wires `eth0` into the
/// pod namespace, with host-local IPAM.
struct CniPod {
    node: Netns,
    pod: Netns,
    conf: String,
    /// The pod's address and its gateway, from the plugin's result.
    ip: String,
    gateway: String,
}

const CNI_DIR: &str = "/usr/lib/cni";

impl CniPod {
    fn new(tag: &str, plugin: &str, subnet: &str) -> CniPod {
        assert!(
            std::path::Path::new(CNI_DIR).join(plugin).exists(),
            "Debian's containernetworking-plugins are needed (scripts/setup.sh)"
        );
        let node = Netns::new(&format!("{tag}n"));
        let pod = Netns::new(&format!("{tag}p"));
        let data = std::env::temp_dir().join(format!("qvisor-ipam-{tag}-{}", std::process::id()));
        let extra = if plugin == "bridge" {
            format!(r#""bridge": "qbr{tag}", "isGateway": true,"#)
        } else {
            String::new()
        };
        let conf = format!(
            r#"{{"cniVersion": "1.0.0", "name": "qt-{tag}", "type": "{plugin}", {extra}
 "ipam": {{"type": "host-local", "ranges": [[{{"subnet": "{subnet}"}}]],
          "routes": [{{"dst": "0.0.0.0/0"}}], "dataDir": "{}"}}}}"#,
            data.display()
        );
        let result = cni(&node, &pod, "ADD", &conf);
        let field = |key: &str| {
            let at = result
                .find(&format!("\"{key}\""))
                .unwrap_or_else(|| panic!("no {key} in the CNI result {result}"));
            let rest = &result[at + key.len() + 2..];
            let start = rest.find('"').unwrap() + 1;
            let end = start + rest[start..].find('"').unwrap();
            rest[start..end].to_string()
        };
        let ip = field("address");
        let gateway = field("gateway");
        CniPod {
            node,
            pod,
            conf,
            ip: ip.split('/').next().unwrap().to_string(),
            gateway,
        }
    }

    fn netns_path(&self) -> String {
        format!("/run/netns/{}", self.pod.0)
    }

    fn pod_ip_cmd(&self, args: &str) -> String {
        let o = Command::new("sh")
            .arg("-c")
            .arg(format!("ip -n {} {args}", self.pod.0))
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).to_string()
    }
}

impl Drop for CniPod {
    fn drop(&mut self) {
        cni(&self.node, &self.pod, "DEL", &self.conf);
    }
}

/// Runs a CNI plugin command the way the spec says: environment and config on stdin.
fn cni(node: &Netns, pod: &Netns, command: &str, conf: &str) -> String {
    let plugin = conf
        .split("\"type\": \"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .unwrap();
    let mut child = Command::new("ip")
        .args(["netns", "exec", &node.0])
        .arg(format!("{CNI_DIR}/{plugin}"))
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", format!("qt-{}", pod.0))
        .env("CNI_NETNS", format!("/run/netns/{}", pod.0))
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", CNI_DIR)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), conf.as_bytes()).unwrap();
    let o = child.wait_with_output().unwrap();
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    if command == "ADD" {
        assert!(o.status.success(), "CNI {command}: {out} {}", stderr(&o));
    }
    out
}

/// A guest in a CNI-made pod: busybox wget fetches from the node, a kernel client on the node
/// reaches the guest's server, and the pod's interface is the kernel's again afterwards.
fn pod_network_works(pod: &CniPod) {
    let www = std::env::temp_dir().join(format!("qvisor-podwww-{}", pod.pod.0));
    std::fs::create_dir_all(&www).unwrap();
    std::fs::write(www.join("index.html"), "served from the node\n").unwrap();
    let mut server = pod.node.sh(&format!(
        "exec python3 -m http.server 8000 --bind 0.0.0.0 -d {} 2>/dev/null",
        www.display()
    ));
    pod.node.wait_for_port("-Hltn", 8000);
    let before_addr = pod.pod_ip_cmd("-4 -o addr show dev eth0");
    let before_routes = pod.pod_ip_cmd("-4 route show");
    assert!(before_addr.contains(&pod.ip), "{before_addr}");

    let netns = pod.netns_path();
    let url = format!("http://{}:8000/index.html", pod.gateway);
    let o = qvisor_with(&["--netns", &netns], &["wget", "-O", "-", &url]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(stdout(&o), "served from the node\n", "{}", stderr(&o));

    // A guest server, reached from the node; while it runs the kernel has no address on eth0
    // and tc redirects eth0 to qnet's TAP.
    let mut child = spawn_guest(
        &["--netns".to_string(), netns.clone()],
        &["/bin/tcp", "server", "8081"],
    );
    let line = first_line(&mut child);
    if line != "listening\n" {
        let o = child.wait_with_output().unwrap();
        panic!("the guest server did not start: {line:?} {}", stderr(&o));
    }
    assert_eq!(pod.pod_ip_cmd("-4 -o addr show dev eth0"), "");
    let filters = Command::new("ip")
        .args([
            "netns", "exec", &pod.pod.0, "tc", "filter", "show", "dev", "eth0", "ingress",
        ])
        .output()
        .unwrap();
    let filters = String::from_utf8_lossy(&filters.stdout);
    assert!(
        filters.contains("mirred") && filters.contains("qtap0"),
        "tc filters on eth0: {filters}"
    );
    let client = pod
        .node
        .sh(&format!("printf from-the-node | nc -N -w5 {} 8081", pod.ip));
    let out = client.wait_with_output().unwrap();
    let o = child.wait_with_output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("pong to {}:from-the-node", pod.gateway),
        "{}",
        stderr(&o)
    );
    let _ = server.kill();
    let _ = server.wait();
    let _ = std::fs::remove_dir_all(&www);
    bulk_leaves_the_pod_as_offload_frames(pod);
    // A guest parked in accept is stopped by SIGTERM (as `kill` or a runtime would) and
    // still gives the interface back.
    let mut child = spawn_guest(
        &["--netns".to_string(), netns.clone()],
        &["/bin/tcp", "server", "8082"],
    );
    let line = first_line(&mut child);
    assert_eq!(line, "listening\n");
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(143), "{}", stderr(&o));
    // Given back as the plugin made it.
    assert_eq!(
        pod.pod_ip_cmd("-4 -o addr show dev eth0")
            .split_whitespace()
            .nth(3),
        before_addr.split_whitespace().nth(3),
        "{}",
        stderr(&o)
    );
    assert_eq!(pod.pod_ip_cmd("-4 route show"), before_routes);
}

/// 64 MiB from the guest to the node leave the pod interface (tc mirred from qnet's TAP to
/// eth0's egress) as segmentation-offload frames: a frame at or above the interface's
/// gso_max_size would be cut into MTU packets in software there, each then a pass of the
/// receiving kernel (the guest's bulk send ran at a third of its speed that way).
fn bulk_leaves_the_pod_as_offload_frames(pod: &CniPod) {
    const BYTES: u64 = 64 << 20;
    let file = std::env::temp_dir().join(format!("qvisor-podbulk-{}", pod.pod.0));
    std::fs::write(&file, vec![7u8; BYTES as usize]).unwrap();
    let sink = pod.node.sh("timeout 60 nc -l -p 8090 | wc -c");
    pod.node.wait_for_port("-Hltn", 8090);
    let tx_packets = || {
        let out = Command::new("ip")
            .args(["netns", "exec", &pod.pod.0, "cat"])
            .arg("/sys/class/net/eth0/statistics/tx_packets")
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse::<u64>()
            .unwrap()
    };
    let before = tx_packets();
    let up = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "{} launch --rootfs {} --netns {} /bin/tcp pipeto {} 8090 < {}",
            env!("CARGO_BIN_EXE_qvisor"),
            root().display(),
            pod.netns_path(),
            pod.gateway,
            file.display()
        ))
        .output()
        .unwrap();
    let packets = tx_packets() - before;
    let got = sink.wait_with_output().unwrap();
    let _ = std::fs::remove_file(&file);
    assert_eq!(up.status.code(), Some(0), "{}", stderr(&up));
    assert_eq!(
        String::from_utf8_lossy(&got.stdout).trim(),
        BYTES.to_string()
    );
    // At full-size frames ~1,000; cut to the MTU ~46,000.
    assert!(
        packets < BYTES / (16 << 10),
        "64 MiB left eth0 in {packets} packets: frames were segmented on the way out"
    );
}

#[test]
fn a_pod_wired_by_the_bridge_plugin_is_taken_over_and_given_back() {
    let pod = CniPod::new("br", "bridge", "10.89.1.0/24");
    pod_network_works(&pod);

    // The same through an OCI bundle whose config.json names the namespace, as containerd
    // writes it after running the CNI plugins.
    let mut server = pod
        .node
        .sh("exec python3 -m http.server 8001 --bind 0.0.0.0 -d /etc 2>/dev/null");
    pod.node.wait_for_port("-Hltn", 8001);
    let url = format!("http://{}:8001/hostname", pod.gateway);
    let dir = bundle("podnet", &["/bin/wget", "-q", "-O", "-", &url], false);
    let config = std::fs::read_to_string(dir.join("config.json")).unwrap();
    let config = config.replace(
        r#"{ "type": "network" }"#,
        &format!(r#"{{ "type": "network", "path": "{}" }}"#, pod.netns_path()),
    );
    std::fs::write(dir.join("config.json"), config).unwrap();
    let o = run_bundle(&dir);
    let _ = server.kill();
    let _ = server.wait();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(
        stdout(&o),
        std::fs::read_to_string("/etc/hostname").unwrap(),
        "{}",
        stderr(&o)
    );
}

#[test]
fn a_bundle_naming_a_namespace_without_a_pod_interface_is_a_clear_error() {
    let ns = Netns::new("empty");
    let dir = bundle("nopod", &["/bin/true"], false);
    let config = std::fs::read_to_string(dir.join("config.json")).unwrap();
    let config = config.replace(
        r#"{ "type": "network" }"#,
        &format!(r#"{{ "type": "network", "path": "/run/netns/{}" }}"#, ns.0),
    );
    std::fs::write(dir.join("config.json"), config).unwrap();
    let o = run_bundle(&dir);
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("has no interface with an IPv4 address besides lo"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn a_pod_wired_by_the_ptp_plugin_routes_everything_through_its_gateway() {
    let pod = CniPod::new("pt", "ptp", "10.89.2.0/24");
    assert!(
        pod.pod_ip_cmd("-4 route show")
            .contains(&format!("10.89.2.0/24 via {}", pod.gateway)),
        "ptp routes the subnet through the gateway: {}",
        pod.pod_ip_cmd("-4 route show")
    );
    pod_network_works(&pod);
}

#[test]
fn busybox_nc_talks_to_kernel_nc_as_client_and_as_server() {
    let ns = Netns::new("nc");
    let opts = net_options(&ns);
    // Guest client, kernel server.
    // (openbsd nc stops reading the network once its stdin ends, so keep that open.)
    let server = ns.sh("(printf from-kernel; sleep 3) | timeout 10 nc -l -p 9000");
    ns.wait_for_port("-Hltn", 9000);
    let mut args: Vec<&str> = opts.iter().map(String::as_str).collect();
    args.extend(["busybox", "nc", "10.66.0.1", "9000"]);
    let mut guest = Command::new(env!("CARGO_BIN_EXE_qvisor"))
        .args(["launch", "--rootfs"])
        .arg(root())
        .args(&args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut guest.stdin.take().unwrap(), b"from-guest").unwrap();
    let o = guest.wait_with_output().unwrap();
    let heard = server.wait_with_output().unwrap();
    assert_eq!(stdout(&o), "from-kernel", "{}", stderr(&o));
    assert_eq!(String::from_utf8_lossy(&heard.stdout), "from-guest");

    // Guest server, kernel client.
    let mut args: Vec<&str> = opts.iter().map(String::as_str).collect();
    args.extend(["busybox", "nc", "-l", "-p", "9001"]);
    let mut guest = Command::new(env!("CARGO_BIN_EXE_qvisor"))
        .args(["launch", "--rootfs"])
        .arg(root())
        .args(&args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = guest.stdin.take().unwrap();
    std::io::Write::write_all(&mut stdin, b"guest-serves").unwrap();
    drop(stdin);
    // The guest's listener exists once the stack has it; retry the kernel client until then.
    let mut reply = String::new();
    for _ in 0..50 {
        let c = ns.sh("printf kernel-asks | nc -q1 -w5 10.66.0.2 9001");
        let out = c.wait_with_output().unwrap();
        if out.status.success() {
            reply = String::from_utf8_lossy(&out.stdout).to_string();
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let o = guest.wait_with_output().unwrap();
    assert_eq!(reply, "guest-serves", "{}", stderr(&o));
    assert_eq!(stdout(&o), "kernel-asks", "{}", stderr(&o));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
}

/// A DNS server answering A queries for one name (python, in the peer namespace).
const DNS_SERVER: &str = r#"
import socket, struct, sys
name, addr = sys.argv[1].encode(), sys.argv[2]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 53))
print("ready", flush=True)
while True:
    q, peer = s.recvfrom(512)
    i, labels = 12, []
    while q[i]:
        labels.append(q[i + 1:i + 1 + q[i]]); i += 1 + q[i]
    qtype = struct.unpack("!H", q[i + 1:i + 3])[0]
    hit = b".".join(labels).lower() == name and qtype == 1
    hdr = q[:2] + struct.pack("!HHHHH", 0x8180 if hit else 0x8183, 1, 1 if hit else 0, 0, 0)
    ans = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 60, 4) + socket.inet_aton(addr) if hit else b""
    s.sendto(hdr + q[12:i + 5] + ans, peer)
"#;

#[test]
fn names_resolve_from_etc_hosts_and_the_resolv_conf_server() {
    let ns = Netns::new("dns");
    let mut web = ns.sh("exec python3 -m http.server 8003 --bind 0.0.0.0 -d /etc 2>/dev/null");
    let mut dns = ns.sh(&format!(
        "exec python3 -c '{DNS_SERVER}' web.cluster.local 10.66.0.1"
    ));
    ns.wait_for_port("-Hltn", 8003);
    ns.wait_for_port("-Hlun", 53);
    let opts = net_options(&ns);
    let mut fetched = Vec::new();
    for host in ["peer.test", "web.cluster.local"] {
        let mut args: Vec<&str> = opts.iter().map(String::as_str).collect();
        let url = format!("http://{host}:8003/hostname");
        args.extend(["wget", "-q", "-O", "-", &url]);
        fetched.push(qvisor(&args));
    }
    let mut args: Vec<&str> = opts.iter().map(String::as_str).collect();
    args.extend([
        "wget",
        "-q",
        "-O",
        "-",
        "http://nowhere.cluster.local:8003/",
    ]);
    let unknown = qvisor(&args);
    for p in [&mut web, &mut dns] {
        let _ = p.kill();
        let _ = p.wait();
    }
    let hostname = std::fs::read_to_string("/etc/hostname").unwrap();
    for o in &fetched {
        assert_eq!(stdout(o), hostname, "{}", stderr(o));
    }
    assert_eq!(unknown.status.code(), Some(1));
    assert!(
        stderr(&unknown).contains("bad address 'nowhere.cluster.local:8003'"),
        "{}",
        stderr(&unknown)
    );
}

/// A file of `len` random bytes and its SHA-256, removed on drop.
struct RandomFile(std::path::PathBuf, String);

impl RandomFile {
    fn new(len: u64) -> RandomFile {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("qvisor-random-{}-{n}", std::process::id()));
        let ok = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "head -c {len} /dev/urandom > {0} && sha256sum {0}",
                path.display()
            ))
            .output()
            .unwrap();
        assert!(ok.status.success(), "making the random file");
        let sum = String::from_utf8_lossy(&ok.stdout)
            .split_whitespace()
            .next()
            .unwrap()
            .to_string();
        RandomFile(path, sum)
    }
}

impl Drop for RandomFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn a_guest_that_writes_closes_and_exits_loses_nothing_to_a_slow_reader() {
    // The peer accepts, then reads nothing for a second while the guest writes 1.5 MiB,
    // closes and exits: as a kernel would after the process exits, everything arrives, then
    // EOF (tests/tests/qnet_stack.rs `a_client_that_closes_and_goes_loses_nothing_it_wrote`
    // pins the stack's side of it).
    const BYTES: usize = 3 << 19;
    let ns = Netns::new("slow");
    let reader = r#"
import socket, time
l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
l.bind(("0.0.0.0", 9102)); l.listen(1)
c, a = l.accept()
time.sleep(1)
n = 0
while True:
    d = c.recv(1 << 16)
    if not d: break
    n += len(d)
print(n)
"#;
    let sink = ns.sh(&format!("timeout 30 python3 -c '{reader}'"));
    ns.wait_for_port("-Hltn", 9102);
    let file = std::env::temp_dir().join(format!("qvisor-slow-{}", std::process::id()));
    std::fs::write(&file, vec![5u8; BYTES]).unwrap();
    let opts = net_options(&ns).join(" ");
    let o = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "{} launch --rootfs {} {opts} /bin/tcp pipeto 10.66.0.1 9102 < {}",
            env!("CARGO_BIN_EXE_qvisor"),
            root().display(),
            file.display()
        ))
        .output()
        .unwrap();
    let got = sink.wait_with_output().unwrap();
    let _ = std::fs::remove_file(&file);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(
        String::from_utf8_lossy(&got.stdout).trim(),
        BYTES.to_string(),
        "{}",
        stderr(&o)
    );
}

#[test]
fn one_gib_each_way_between_the_guest_and_the_kernel_matches_sha256() {
    let data = RandomFile::new(1 << 30);
    let (file, sum) = (&data.0, &data.1);
    let ns = Netns::new("gib");
    let opts = net_options(&ns).join(" ");
    let qvisor = env!("CARGO_BIN_EXE_qvisor");
    let root = root().display().to_string();
    // Guest -> kernel: the file is the guest's stdin; the kernel's nc hashes what arrives.
    // (The guest moves 64 KiB per syscall: busybox nc's 1 KiB reads cost three exits per KiB.)
    let sink = ns.sh("timeout 120 nc -l -p 9100 | sha256sum");
    ns.wait_for_port("-Hltn", 9100);
    let t = std::time::Instant::now();
    let up = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "{qvisor} launch --rootfs {root} {opts} /bin/tcp pipeto 10.66.0.1 9100 < {}",
            file.display()
        ))
        .output()
        .unwrap();
    let got = sink.wait_with_output().unwrap();
    let up_secs = t.elapsed().as_secs_f64();
    assert_eq!(up.status.code(), Some(0), "{}", stderr(&up));
    assert_eq!(
        String::from_utf8_lossy(&got.stdout)
            .split_whitespace()
            .next(),
        Some(sum.as_str()),
        "guest -> kernel"
    );
    // Kernel -> guest: the kernel's nc serves the file; the guest's stdout is hashed.
    let mut source = ns.sh(&format!(
        "timeout 120 nc -l -p 9101 -N < {}",
        file.display()
    ));
    ns.wait_for_port("-Hltn", 9101);
    let t = std::time::Instant::now();
    let down = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "{qvisor} launch --rootfs {root} {opts} /bin/tcp pipefrom 10.66.0.1 9101 </dev/null | sha256sum"
        ))
        .output()
        .unwrap();
    let down_secs = t.elapsed().as_secs_f64();
    let _ = source.kill();
    let _ = source.wait();
    assert_eq!(
        String::from_utf8_lossy(&down.stdout)
            .split_whitespace()
            .next(),
        Some(sum.as_str()),
        "kernel -> guest: {}",
        stderr(&down)
    );
    eprintln!("1 GiB guest->kernel {up_secs:.1} s, kernel->guest {down_secs:.1} s");
}

#[test]
fn a_socket_hog_hits_emfile_and_another_container_keeps_working() {
    let hog_ns = Netns::new("hog");
    let mut listener = hog_ns.sh(
        "exec python3 -c 'import socket,time; l=socket.socket(); l.bind((\"0.0.0.0\", 9200)); l.listen(4096); time.sleep(150)'",
    );
    hog_ns.wait_for_port("-Hltn", 9200);
    let mut hog = Command::new(env!("CARGO_BIN_EXE_qvisor"))
        .args(["launch", "--rootfs"])
        .arg(root())
        .args(net_options(&hog_ns))
        .args(["/bin/tcp", "hog", "10.66.0.1", "9200"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let line = first_line(&mut hog);
    assert_eq!(
        line,
        "opened 1021 sockets (1021 connecting), then: Too many open files\n"
    );
    // The hog holds its sockets until killed: its qvisor's memory stays small.
    let status = std::fs::read_to_string(format!("/proc/{}/status", hog.id())).unwrap();
    let peak_kib = status_kib(&status, "VmHWM");
    assert!(
        peak_kib < 512 << 10,
        "the hog's qvisor peaked at {peak_kib} KiB"
    );
    // Meanwhile another container moves 256 MiB intact.
    let data = RandomFile::new(256 << 20);
    let other = Netns::new("nothog");
    let sink = other.sh("timeout 60 nc -l -p 9100 | sha256sum");
    other.wait_for_port("-Hltn", 9100);
    let up = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "{} launch --rootfs {} {} /bin/tcp pipeto 10.66.0.1 9100 < {}",
            env!("CARGO_BIN_EXE_qvisor"),
            root().display(),
            net_options(&other).join(" "),
            data.0.display()
        ))
        .output()
        .unwrap();
    let got = sink.wait_with_output().unwrap();
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(hog.id() as i32, libc::SIGTERM) };
    let o = hog.wait_with_output().unwrap();
    let _ = listener.kill();
    let _ = listener.wait();
    assert_eq!(o.status.code(), Some(143), "{}", stderr(&o));
    assert_eq!(up.status.code(), Some(0), "{}", stderr(&up));
    assert_eq!(
        String::from_utf8_lossy(&got.stdout)
            .split_whitespace()
            .next(),
        Some(data.1.as_str())
    );
}

/// A Quark container in a tenant VPC: its pod's interface is a qnetd endpoint (a TAP qnetd
/// made), which qvisor takes over like any CNI interface; across VXLAN it serves a kernel
/// client on another node and fetches from a kernel server there.
#[test]
fn a_quark_container_in_a_qnetd_vpc_talks_to_a_pod_on_another_node() {
    quark_container_in_a_vpc(false);
}

/// The same with the container on a ring endpoint: no interface, no namespace, no stack in
/// qvisor; its sockets are served over the socket ring by a stack qnetd runs for it.
#[test]
fn a_quark_container_on_a_qnetd_ring_endpoint_talks_to_a_pod_on_another_node() {
    quark_container_in_a_vpc(true);
}

fn quark_container_in_a_vpc(ring: bool) {
    use quark_tests::overlay::{qnetd_call, start_qnetd_in, underlay_ip, Underlay};
    let ul = Underlay::new();
    let (na, nb) = (ul.join("vna", 1), ul.join("vnb", 2));
    let dir = std::env::temp_dir().join(format!("qvisor-vpc-{}-{ring}", std::process::id()));
    let sa = start_qnetd_in(
        &format!("/run/netns/{}", na.name),
        underlay_ip(1),
        &dir.join("a"),
    );
    let sb = start_qnetd_in(
        &format!("/run/netns/{}", nb.name),
        underlay_ip(2),
        &dir.join("b"),
    );
    let (quark, kernel) = (quark_tests::Netns::new("vq"), quark_tests::Netns::new("vk"));
    let vpc = r#"{"name": "red", "vni": 42, "cidr": "10.42.0.0/24"}"#;
    let ep = |name: &str, ip: &str, ns: &quark_tests::Netns| {
        format!(
            r#"{{"name": "{name}", "vpc": "red", "ip": "{ip}", "netns": "/run/netns/{}"}}"#,
            ns.name
        )
    };
    let remote = |name: &str, ip: &str, node: u8| {
        format!(
            r#"{{"name": "{name}", "vpc": "red", "ip": "{ip}", "node": "{}"}}"#,
            underlay_ip(node)
        )
    };
    for s in [&sa, &sb] {
        qnetd_call(s, "POST", "/v1/vpcs", vpc);
    }
    let q = if ring {
        r#"{"name": "q", "vpc": "red", "ip": "10.42.0.2", "attach": "ring"}"#.to_string()
    } else {
        ep("q", "10.42.0.2", &quark)
    };
    let made = qnetd_call(&sa, "POST", "/v1/endpoints", &q);
    qnetd_call(&sb, "POST", "/v1/endpoints", &ep("k", "10.42.0.3", &kernel));
    qnetd_call(&sa, "POST", "/v1/endpoints", &remote("k", "10.42.0.3", 2));
    qnetd_call(&sb, "POST", "/v1/endpoints", &remote("q", "10.42.0.2", 1));

    let net: Vec<String> = if ring {
        let made: serde_json::Value = serde_json::from_str(&made).unwrap();
        let socket = made["ring"]["socket"].as_str().expect("the ring's socket");
        vec!["--net-ring".into(), socket.into()]
    } else {
        vec!["--netns".into(), format!("/run/netns/{}", quark.name)]
    };
    let mut child = spawn_guest(&net, &["/bin/tcp", "server", "8081"]);
    if first_line(&mut child) != "listening\n" {
        let _ = child.kill();
        let o = child.wait_with_output().unwrap();
        panic!("the guest server did not start: {}", stderr(&o));
    }
    // -N: nc half-closes after its input and waits (up to -w5 idle) for the guest's reply and
    // close. With -q1 it quit a second after its input whatever came: too short for the
    // reply's way back through two qnetds while the rest of the suite loaded both cores (one
    // failure in about six runs).
    let out = kernel.sh("printf from-node-b | nc -N -w5 10.42.0.2 8081");
    let o = child.wait_with_output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "pong to 10.42.0.3:from-node-b",
        "{}",
        stderr(&o)
    );

    let www = dir.join("www");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::write(www.join("index.html"), "served on node b\n").unwrap();
    let mut server = kernel
        .cmd("python3")
        .args(["-m", "http.server", "8000", "--bind", "0.0.0.0", "-d"])
        .arg(&www)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.join("http.log")).unwrap())
        .spawn()
        .unwrap();
    let log = dir.join("http.log");
    let listening = std::panic::catch_unwind(|| quark_tests::wait_listening(&kernel, 8000));
    assert!(
        listening.is_ok(),
        "{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let net: Vec<&str> = net.iter().map(String::as_str).collect();
    let o = qvisor_with(
        &net,
        &["wget", "-O", "-", "http://10.42.0.3:8000/index.html"],
    );
    // The OCI path: a bundle whose annotation names the ring endpoint's socket.
    let oci = ring.then(|| {
        let b = bundle(
            "vpc-ring",
            &["busybox", "wget", "-O", "-", "http://10.42.0.3:8000/index.html"],
            true,
        );
        let config = b.join("config.json");
        let text = std::fs::read_to_string(&config).unwrap().replacen(
            "\"ociVersion\": \"1.0.2-dev\",",
            &format!(
                "\"ociVersion\": \"1.0.2-dev\",\n  \"annotations\": {{\"dev.quark.net.ring\": \"{}\"}},",
                net[1]
            ),
            1,
        );
        std::fs::write(&config, text).unwrap();
        let o = run_bundle(&b);
        let _ = std::fs::remove_dir_all(&b);
        o
    });
    let _ = server.kill();
    let _ = server.wait();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(stdout(&o), "served on node b\n", "{}", stderr(&o));
    if let Some(o) = oci {
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        assert_eq!(stdout(&o), "served on node b\n", "{}", stderr(&o));
    }
}

/// qhttp in front of a guest server: `launch --http-proxy` starts it on the container's stack,
/// reachable at the container's own address; curl (HTTP/1.1 and h2c) gets busybox httpd's
/// files through it, errors come from the proxy, and the metrics port counts both.
#[test]
fn qhttp_serves_a_guest_httpd_at_the_container_address() {
    let ns = Netns::new("qhttp");
    let cfg = std::env::temp_dir().join(format!("qvisor-qhttp-{}.json", std::process::id()));
    std::fs::write(
        &cfg,
        r#"{"listeners": [{"port": 80, "routes": [
              {"pathPrefix": "/", "upstream": 8082},
              {"pathPrefix": "/down", "upstream": 8099}]}],
            "metricsPort": 9100}"#,
    )
    .unwrap();
    let mut opts = net_options(&ns);
    opts.extend(["--http-proxy".to_string(), cfg.display().to_string()]);
    let mut server = spawn_guest(
        &opts,
        &["busybox", "httpd", "-f", "-p", "8082", "-h", "/data"],
    );
    let curl = |args: &str| -> String {
        let o = ns
            .sh(&format!("curl -sS -m 5 {args}"))
            .wait_with_output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let want = std::fs::read_to_string(root().join("data/lines.txt")).unwrap();
    // The proxy listens before the guest runs; retry until httpd in the guest is up too.
    let mut body = String::new();
    for _ in 0..100 {
        body = curl("http://10.66.0.2/lines.txt");
        if body == want {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let h2 = curl("--http2-prior-knowledge -w '%{http_version}' http://10.66.0.2/lines.txt");
    let refused = curl("-o /dev/null -w '%{http_code}' http://10.66.0.2/down/x");
    let metrics = curl("http://10.66.0.2:9100/metrics");
    let _ = server.kill();
    let o = server.wait_with_output().unwrap();
    let _ = std::fs::remove_file(&cfg);
    assert_eq!(body, want, "{}", stderr(&o));
    assert_eq!(h2, format!("{want}2"));
    assert_eq!(refused, "502");
    assert!(
        metrics.contains("qhttp_requests_total{route=\"*/\",status=\"200\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("qhttp_requests_total{route=\"*/down\",status=\"502\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("qnet_tcp_accepted_total"), "{metrics}");
}

/// A bundle's annotations start qhttp: a container with only its own (loopback) network runs
/// httpd and fetches through the proxy on 127.0.0.1:80, all inside the guest.
#[test]
fn qhttp_from_bundle_annotations() {
    let dir = bundle(
        "qhttp-ann",
        &[
            "/bin/sh",
            "-c",
            "busybox httpd -p 8082 -h /data && sleep 0.3 && busybox wget -q -O - http://127.0.0.1/lines.txt",
        ],
        true,
    );
    let config = dir.join("config.json");
    let text = std::fs::read_to_string(&config).unwrap();
    let text = text.replacen(
        "\"ociVersion\": \"1.0.2-dev\",",
        "\"ociVersion\": \"1.0.2-dev\",\n  \"annotations\": {\"dev.quark.qhttp.routes\": \"80:/=8082\"},",
        1,
    );
    std::fs::write(&config, text).unwrap();
    let o = run_bundle(&dir);
    let want = std::fs::read_to_string(root().join("data/lines.txt")).unwrap();
    assert_eq!(stdout(&o), want, "{}", stderr(&o));

    // A bad annotation fails the container with the key named.
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("80:/=8082", "80:/=nowhere");
    std::fs::write(&config, text).unwrap();
    let o = run_bundle(&dir);
    assert_ne!(o.status.code(), Some(0));
    assert!(
        stderr(&o).contains("dev.quark.qhttp.routes"),
        "{}",
        stderr(&o)
    );
}

/// A guest killed when the test ends before it ended the guest itself (a failed assertion).
struct Reap(Option<std::process::Child>);

impl Drop for Reap {
    fn drop(&mut self) {
        if let Some(c) = &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// One field of /proc/PID/task/TID/status.
fn status_field(status: &str, key: &str) -> String {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .unwrap_or_else(|| panic!("no {key} in {status}"))
        .trim()
        .to_string()
}

/// A size field of /proc/PID/status ("VmRSS:   8484 kB"), in KiB.
fn status_kib(status: &str, key: &str) -> u64 {
    let field = status_field(status, key);
    field
        .split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{key} is not a size: {field}"))
}

#[test]
fn the_vmm_runs_confined_in_an_empty_root_and_its_keeper_gives_the_pod_back_after_sigkill() {
    let pod = CniPod::new("jl", "ptp", "10.89.3.0/24");
    let before_addr = pod.pod_ip_cmd("-4 -o addr show dev eth0");
    let before_routes = pod.pod_ip_cmd("-4 route show");
    let mut guest = Reap(Some(spawn_guest(
        &["--netns".to_string(), pod.netns_path()],
        &["/bin/tcp", "server", "8084"],
    )));
    let child = guest.0.as_mut().expect("the guest");
    assert_eq!(first_line(child), "listening\n");
    assert_eq!(pod.pod_ip_cmd("-4 -o addr show dev eth0"), "");

    // Every thread of the VMM: no new privileges, seccomp filtering, only the file
    // capabilities left (CAP_CHOWN, DAC_OVERRIDE, DAC_READ_SEARCH, FOWNER, FSETID = 0x1f).
    let pid = child.id();
    let mut kinds = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let dir = task.unwrap().path();
        let name = std::fs::read_to_string(dir.join("comm")).unwrap();
        let status = std::fs::read_to_string(dir.join("status")).unwrap();
        let name = name.trim();
        if name.starts_with("kvm-") {
            continue; // KVM's kernel worker (nx huge page recovery) runs no user code
        }
        assert_eq!(status_field(&status, "NoNewPrivs"), "1", "{name}");
        assert_eq!(status_field(&status, "Seccomp"), "2", "{name}");
        for set in ["CapEff", "CapPrm", "CapBnd"] {
            assert_eq!(
                status_field(&status, set),
                "000000000000001f",
                "{name}: {set}"
            );
        }
        assert_eq!(
            status_field(&status, "CapInh"),
            "0000000000000000",
            "{name}"
        );
        let filters: u32 = status_field(&status, "Seccomp_filters").parse().unwrap();
        if ["qvisor-vcpu", "qvisor-syscalls", "qnet"].contains(&name) {
            // The process's filter, the soft denials and the thread kind's own.
            assert_eq!(filters, 3, "{name}");
            kinds.push(name.to_string());
        } else {
            assert_eq!(filters, 1, "{name}");
        }
    }
    kinds.sort();
    assert_eq!(kinds, ["qnet", "qvisor-syscalls", "qvisor-vcpu"]);

    // Its root is an empty read-only tmpfs, the only mount it sees: no host path resolves.
    assert_eq!(
        std::fs::read_dir(format!("/proc/{pid}/root"))
            .unwrap()
            .count(),
        0
    );
    let mounts = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
    assert_eq!(mounts.lines().count(), 1, "{mounts}");
    assert!(mounts.contains(" / / ro,"), "{mounts}");

    // The keeper: the VMM's one child, unconfined, waiting to give the interface back.
    let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap();
    let keeper: u32 = children.split_whitespace().next().unwrap().parse().unwrap();
    let cmdline = std::fs::read_to_string(format!("/proc/{keeper}/cmdline")).unwrap();
    assert!(cmdline.ends_with("keeper\0"), "{cmdline:?}");

    // SIGKILL leaves the VMM no chance to clean up; the keeper does it.
    let mut child = guest.0.take().expect("the guest");
    child.kill().unwrap();
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), None, "{}", stderr(&o));
    let keeper_gone = || {
        std::fs::read_to_string(format!("/proc/{keeper}/stat"))
            .map(|s| s.contains(") Z "))
            .unwrap_or(true)
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !keeper_gone() {
        assert!(
            std::time::Instant::now() < deadline,
            "the keeper is still there 10 s after the VMM died"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(
        pod.pod_ip_cmd("-4 -o addr show dev eth0")
            .split_whitespace()
            .nth(3),
        before_addr.split_whitespace().nth(3)
    );
    assert_eq!(pod.pod_ip_cmd("-4 route show"), before_routes);
}
