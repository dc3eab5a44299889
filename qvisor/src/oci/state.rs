//! Container state under `--root`: one directory per container, holding `state.json` (what
//! `create` learnt), the exec fifo `create` leaves for `start`, and the lock every command
//! takes (an `flock` on the directory itself). The status is never stored: it is read from
//! the VMM process (alive, stopped by `pause`, gone) and the fifo, so a VMM that crashed is
//! reported stopped without anyone having to notice.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

use super::cgroup::Cgroup;

/// The OCI runtime spec version the state JSON follows.
pub const OCI_VERSION: &str = "1.0.2";
/// `--root` when none is given.
pub const DEFAULT_ROOT: &str = "/run/qvisor";

const STATE_FILE: &str = "state.json";
const EXEC_FIFO: &str = "exec.fifo";

/// The lifecycle status, as `state` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Booted, waiting for `start`.
    Created,
    Running,
    /// The VMM is stopped (`pause`).
    Paused,
    Stopped,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Created => "created",
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Stopped => "stopped",
        }
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What `create` records about a container.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    pub id: String,
    /// The bundle's absolute path.
    pub bundle: PathBuf,
    pub rootfs: PathBuf,
    /// The VMM process: the container's pid.
    pub pid: i32,
    /// Its start time (field 22 of /proc/PID/stat), so a reused pid is not mistaken for it.
    pub pid_start: u64,
    /// RFC 3339, UTC.
    pub created: String,
    #[serde(default)]
    pub annotations: HashMap<String, String>,
    /// The cgroups the VMM was placed in.
    #[serde(default)]
    pub cgroup: Option<Cgroup>,
    /// The spec's hooks, kept for `start` (poststart) and `delete` (poststop).
    #[serde(default)]
    pub hooks: Option<oci_spec::runtime::Hooks>,
}

/// The OCI state JSON (`runc state`'s shape).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OciState<'a> {
    pub oci_version: &'static str,
    pub id: &'a str,
    pub pid: i32,
    pub status: &'static str,
    pub bundle: &'a Path,
    pub rootfs: &'a Path,
    pub created: &'a str,
    pub owner: &'static str,
    #[serde(skip_serializing_if = "HashMap::is_empty")]
    pub annotations: &'a HashMap<String, String>,
}

/// The state root (`--root`).
pub struct Store {
    root: PathBuf,
}

/// One container's directory, locked for as long as this lives.
pub struct Container {
    dir: PathBuf,
    _lock: File,
}

/// Whether `id` can name a directory under the root.
pub fn check_id(id: &str) -> anyhow::Result<()> {
    let ok = !id.is_empty()
        && id != "."
        && id != ".."
        && id.len() <= 1024
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_+-.".contains(&b));
    if !ok {
        bail!("invalid container id format: {id:?}");
    }
    Ok(())
}

fn lock(dir: &Path) -> anyhow::Result<File> {
    let f = File::open(dir).with_context(|| format!("opening {}", dir.display()))?;
    // SAFETY: flock on a descriptor we own; blocks until other commands on this container end.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("locking {}", dir.display()));
    }
    Ok(f)
}

impl Store {
    pub fn new(root: &Path) -> Store {
        Store { root: root.into() }
    }

    /// Makes the directory of a new container: fails if the id is taken.
    pub fn create(&self, id: &str) -> anyhow::Result<Container> {
        check_id(id)?;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.root)
            .with_context(|| format!("creating the state root {}", self.root.display()))?;
        let dir = self.root.join(id);
        match std::fs::DirBuilder::new().mode(0o711).create(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                bail!("container with id exists: {id}")
            }
            Err(e) => return Err(e).with_context(|| format!("creating {}", dir.display())),
        }
        Ok(Container {
            _lock: lock(&dir)?,
            dir,
        })
    }

    /// Opens (and locks) an existing container.
    pub fn open(&self, id: &str) -> anyhow::Result<Container> {
        check_id(id)?;
        let dir = self.root.join(id);
        if !dir.join(STATE_FILE).exists() {
            bail!("container {id} does not exist");
        }
        let container = Container {
            _lock: lock(&dir)?,
            dir,
        };
        // Deleted while we waited for the lock?
        if !container.dir.join(STATE_FILE).exists() {
            bail!("container {id} does not exist");
        }
        Ok(container)
    }

    /// The directory of `id`, whether or not its state was ever written.
    pub fn dir_of(&self, id: &str) -> PathBuf {
        self.root.join(id)
    }

    /// Ids of every container with a state file, sorted.
    pub fn ids(&self) -> anyhow::Result<Vec<String>> {
        let entries = match std::fs::read_dir(&self.root) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e).with_context(|| format!("reading {}", self.root.display())),
        };
        let mut ids: Vec<String> = entries
            .filter_map(Result::ok)
            .filter(|e| e.path().join(STATE_FILE).exists())
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        ids.sort();
        Ok(ids)
    }
}

impl Container {
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn exec_fifo(&self) -> PathBuf {
        self.dir.join(EXEC_FIFO)
    }

    /// Makes the fifo whose opening by `start` releases the VMM.
    pub fn make_exec_fifo(&self) -> anyhow::Result<()> {
        let path = self.exec_fifo();
        let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())?;
        // SAFETY: mkfifo with a NUL-terminated path.
        if unsafe { libc::mkfifo(c.as_ptr(), 0o600) } != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("mkfifo {}", path.display()));
        }
        Ok(())
    }

    pub fn read(&self) -> anyhow::Result<Record> {
        let path = self.dir.join(STATE_FILE);
        let text = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_slice(&text).with_context(|| format!("parsing {}", path.display()))
    }

    /// Writes the record atomically (a reader sees the old one or the new one).
    pub fn write(&self, record: &Record) -> anyhow::Result<()> {
        write_atomically(
            &self.dir.join(STATE_FILE),
            &serde_json::to_vec(record)?,
            0o600,
        )
    }

    /// The status now.
    pub fn status(&self, record: &Record) -> Status {
        match process_state(record.pid, record.pid_start) {
            None => Status::Stopped,
            Some('T') | Some('t') => Status::Paused,
            Some(_) if self.exec_fifo().exists() => Status::Created,
            Some(_) => Status::Running,
        }
    }

    /// Removes the directory (the lock goes with it).
    pub fn destroy(self) -> anyhow::Result<()> {
        std::fs::remove_dir_all(&self.dir)
            .with_context(|| format!("removing {}", self.dir.display()))
    }
}

impl Record {
    pub fn oci_state(&self, status: Status) -> OciState<'_> {
        OciState {
            oci_version: OCI_VERSION,
            id: &self.id,
            pid: if status == Status::Stopped {
                0
            } else {
                self.pid
            },
            status: status.as_str(),
            bundle: &self.bundle,
            rootfs: &self.rootfs,
            created: &self.created,
            owner: "",
            annotations: &self.annotations,
        }
    }
}

/// Writes `data` to `path` through a temporary file and a rename.
pub fn write_atomically(path: &Path, data: &[u8], mode: u32) -> anyhow::Result<()> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut f = File::create(&tmp)?;
        f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        f.write_all(data)?;
        std::fs::rename(&tmp, path)
    };
    write()
        .inspect_err(|_| {
            let _ = std::fs::remove_file(&tmp);
        })
        .with_context(|| format!("writing {}", path.display()))
}

/// Fields of /proc/PID/stat after the command name.
fn stat_fields(pid: i32) -> Option<Vec<String>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_string).collect())
}

/// The start time of process `pid` (clock ticks since boot), if it exists.
pub fn start_time(pid: i32) -> Option<u64> {
    stat_fields(pid)?.get(19)?.parse().ok()
}

/// The state letter of `pid` (R, S, T...) if it is the process that started at `start` and
/// has not exited (a zombie has exited: only its status is left for its parent).
pub fn process_state(pid: i32, start: u64) -> Option<char> {
    let f = stat_fields(pid)?;
    let state = f.first()?.chars().next()?;
    let started: u64 = f.get(19)?.parse().ok()?;
    (started == start && state != 'Z' && state != 'X').then_some(state)
}
