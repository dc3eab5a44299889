//! `process.terminal`: the VMM makes a pseudo-terminal, hands its master to whoever listens on
//! `--console-socket` (SCM_RIGHTS, as runc does), and takes the slave as its controlling
//! terminal and stdio, so the guest's console is that terminal.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;

use anyhow::Context;

fn check(ret: libc::c_int, what: &str) -> anyhow::Result<libc::c_int> {
    if ret < 0 {
        return Err(std::io::Error::last_os_error()).context(what.to_string());
    }
    Ok(ret)
}

/// Opens a pty pair: (master, slave path).
pub(crate) fn open_pty() -> anyhow::Result<(OwnedFd, std::ffi::CString)> {
    // SAFETY: posix_openpt returns a new descriptor or -1.
    let fd = check(
        unsafe { libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC) },
        "posix_openpt",
    )?;
    // SAFETY: fd is a fresh descriptor we own from here on.
    let master = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: grantpt/unlockpt on our master; ptsname_r writes at most buf.len() bytes.
    let mut buf = [0 as libc::c_char; 128];
    unsafe {
        check(libc::grantpt(fd), "grantpt")?;
        check(libc::unlockpt(fd), "unlockpt")?;
        if libc::ptsname_r(fd, buf.as_mut_ptr(), buf.len()) != 0 {
            anyhow::bail!("ptsname_r failed");
        }
    }
    // SAFETY: ptsname_r NUL-terminated buf.
    let name = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) }.to_owned();
    Ok((master, name))
}

/// Makes a pty and sends its master to `socket`, as runc does; gives back the slave's path.
pub(crate) fn pty_to_socket(socket: &Path) -> anyhow::Result<std::ffi::CString> {
    let (master, slave_name) = open_pty()?;
    let sock = UnixStream::connect(socket)
        .with_context(|| format!("connecting to the console socket {}", socket.display()))?;
    // runc sends the pty's path as the payload.
    qnet_client::sys::send_with_fds(&sock, slave_name.as_bytes(), &[master.as_raw_fd()])
        .context("sending the pty master")?;
    Ok(slave_name)
}

/// Makes a pty, sends its master to `socket`, and makes its slave this process's controlling
/// terminal and stdin/stdout/stderr.
pub fn attach(socket: &Path) -> anyhow::Result<()> {
    let slave_name = pty_to_socket(socket)?;
    // SAFETY: setsid has no preconditions (fails harmlessly if already a leader); the slave is
    // opened by its NUL-terminated name and becomes our stdio through dup2.
    unsafe {
        libc::setsid();
        let slave = check(
            libc::open(slave_name.as_ptr(), libc::O_RDWR),
            "opening the pty",
        )?;
        check(libc::ioctl(slave, libc::TIOCSCTTY, 0), "TIOCSCTTY")?;
        for fd in 0..3 {
            check(libc::dup2(slave, fd), "dup2 of the pty")?;
        }
        if slave > 2 {
            libc::close(slave);
        }
    }
    Ok(())
}
