//! The VMM's cgroup (`linux.cgroupsPath` and `linux.resources`), v1 or v2 as the host mounts
//! them. The whole VM is one process, so its cgroup bounds everything the container costs the
//! host: guest memory, the network stack's buffers and the VMM itself.

use std::path::{Path, PathBuf};

use anyhow::Context;
use oci_spec::runtime::LinuxResources;
use serde::{Deserialize, Serialize};

const CGROUP_ROOT: &str = "/sys/fs/cgroup";
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
/// v1 hierarchies the VMM joins (those that exist on the host).
const V1_CONTROLLERS: [&str; 6] = ["memory", "cpu", "cpuacct", "pids", "freezer", "blkio"];

/// Host memory the VMM needs beside guest memory (its binary, page tables, the network stack's
/// fixed part); the cgroup limit is the guest's size plus this. A RuntimeClass declares it as
/// `overhead.podFixed.memory` (docs/kubernetes.md).
pub const VMM_OVERHEAD: u64 = 64 << 20;

/// The directories of one container's cgroup.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Cgroup {
    pub v2: bool,
    pub dirs: Vec<PathBuf>,
}

/// Usage figures for `events --stats`.
#[derive(Debug, Default, Serialize)]
pub struct Usage {
    pub memory_bytes: Option<u64>,
    pub memory_limit: Option<u64>,
    pub cpu_ns: Option<u64>,
    pub pids: Option<u64>,
}

fn unified() -> bool {
    // SAFETY: statfs fills a zeroed struct for a NUL-terminated path.
    unsafe {
        let mut st: libc::statfs = std::mem::zeroed();
        libc::statfs(c"/sys/fs/cgroup".as_ptr(), &mut st) == 0
            && st.f_type as i64 == CGROUP2_SUPER_MAGIC
    }
}

/// Our own cgroup in `hierarchy` ("" for v2), from /proc/self/cgroup.
fn own_cgroup(hierarchy: &str) -> String {
    let text = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let mut parts = l.splitn(3, ':');
            let (_, ctrls, path) = (parts.next()?, parts.next()?, parts.next()?);
            ctrls
                .split(',')
                .any(|c| c == hierarchy)
                .then(|| path.to_string())
        })
        .next()
        .unwrap_or_else(|| "/".into())
}

/// `cgroupsPath` as a path inside a hierarchy: absolute from its root, relative from our own
/// cgroup there; `--systemd-cgroup`'s `slice:prefix:name` becomes `slice/prefix-name.scope`
/// (the unit systemd would make; qvisor writes the cgroup files itself).
fn inner_path(spec_path: &str, systemd: bool, hierarchy: &str) -> anyhow::Result<PathBuf> {
    let path = if systemd {
        let parts: Vec<&str> = spec_path.split(':').collect();
        let [slice, prefix, name] = parts[..] else {
            anyhow::bail!(
                "cgroupsPath {spec_path:?}: expected slice:prefix:name with --systemd-cgroup"
            );
        };
        let slice = if slice.is_empty() {
            "system.slice"
        } else {
            slice
        };
        format!("/{slice}/{prefix}-{name}.scope")
    } else if spec_path.starts_with('/') {
        spec_path.to_string()
    } else {
        format!("{}/{spec_path}", own_cgroup(hierarchy))
    };
    let path = PathBuf::from(path);
    anyhow::ensure!(
        path.components()
            .all(|c| !matches!(c, std::path::Component::ParentDir)),
        "cgroupsPath {spec_path:?} climbs out with .."
    );
    Ok(path)
}

fn write(dir: &Path, file: &str, value: &str) -> anyhow::Result<()> {
    std::fs::write(dir.join(file), value)
        .with_context(|| format!("writing {value:?} to {}", dir.join(file).display()))
}

fn read_u64(path: PathBuf) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

impl Cgroup {
    /// Makes the container's cgroup, sets its limits and moves `pid` into it. `guest_memory`
    /// is the VM's size, which the memory limit covers with the VMM's overhead.
    pub fn create(
        spec_path: &str,
        systemd: bool,
        resources: Option<&LinuxResources>,
        guest_memory: u64,
        pid: i32,
    ) -> anyhow::Result<Cgroup> {
        let cg = if unified() {
            let dir = Path::new(CGROUP_ROOT).join(
                inner_path(spec_path, systemd, "")?
                    .strip_prefix("/")
                    .unwrap_or(Path::new("")),
            );
            Cgroup {
                v2: true,
                dirs: vec![dir],
            }
        } else {
            let mut dirs = Vec::new();
            for ctrl in V1_CONTROLLERS {
                let mount = Path::new(CGROUP_ROOT).join(ctrl);
                if !mount.is_dir() {
                    continue;
                }
                let inner = inner_path(spec_path, systemd, ctrl)?;
                let dir = mount.join(inner.strip_prefix("/").unwrap_or(&inner));
                if !dirs.contains(&dir) {
                    dirs.push(dir);
                }
            }
            Cgroup { v2: false, dirs }
        };
        cg.make(resources, guest_memory, pid).inspect_err(|_| {
            let _ = cg.remove();
        })?;
        Ok(cg)
    }

    fn make(
        &self,
        resources: Option<&LinuxResources>,
        guest_memory: u64,
        pid: i32,
    ) -> anyhow::Result<()> {
        let memory = guest_memory + VMM_OVERHEAD;
        let cpu = resources.and_then(|r| r.cpu().as_ref());
        let quota = cpu.and_then(|c| c.quota()).filter(|q| *q > 0);
        let period = cpu.and_then(|c| c.period()).unwrap_or(100_000);
        let shares = cpu.and_then(|c| c.shares()).filter(|s| *s > 0);
        let pids = resources
            .and_then(|r| r.pids().as_ref())
            .map(|p| p.limit())
            .filter(|l| *l > 0);
        if self.v2 {
            let dir = &self.dirs[0];
            // Controllers must be enabled in every ancestor for the files to exist.
            let mut ancestor = PathBuf::from(CGROUP_ROOT);
            for c in dir
                .strip_prefix(CGROUP_ROOT)
                .unwrap_or(Path::new(""))
                .components()
            {
                let _ = std::fs::write(
                    ancestor.join("cgroup.subtree_control"),
                    "+memory +cpu +pids",
                );
                ancestor.push(c);
                std::fs::create_dir_all(&ancestor)
                    .with_context(|| format!("creating {}", ancestor.display()))?;
            }
            write(dir, "memory.max", &memory.to_string())?;
            if let Some(q) = quota {
                write(dir, "cpu.max", &format!("{q} {period}"))?;
            }
            if let Some(s) = shares {
                // The conversion runc and crun use: shares [2, 262144] to weight [1, 10000].
                let weight = 1 + ((s.clamp(2, 262_144) - 2) * 9999) / 262_142;
                write(dir, "cpu.weight", &weight.to_string())?;
            }
            if let Some(p) = pids {
                write(dir, "pids.max", &p.to_string())?;
            }
            write(dir, "cgroup.procs", &pid.to_string())?;
            return Ok(());
        }
        for dir in &self.dirs {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            let ctrl = dir
                .strip_prefix(CGROUP_ROOT)
                .ok()
                .and_then(|p| p.components().next())
                .map(|c| c.as_os_str().to_string_lossy().to_string())
                .unwrap_or_default();
            match ctrl.as_str() {
                "memory" => write(dir, "memory.limit_in_bytes", &memory.to_string())?,
                "cpu" => {
                    if let Some(q) = quota {
                        write(dir, "cpu.cfs_period_us", &period.to_string())?;
                        write(dir, "cpu.cfs_quota_us", &q.to_string())?;
                    }
                    if let Some(s) = shares {
                        write(dir, "cpu.shares", &s.to_string())?;
                    }
                }
                "pids" => {
                    if let Some(p) = pids {
                        write(dir, "pids.max", &p.to_string())?;
                    }
                }
                _ => {}
            }
            write(dir, "cgroup.procs", &pid.to_string())?;
        }
        Ok(())
    }

    /// Removes the directories (the VMM has exited). Missing ones are fine.
    pub fn remove(&self) -> anyhow::Result<()> {
        for dir in &self.dirs {
            let mut tries = 0;
            loop {
                match std::fs::remove_dir(dir) {
                    Ok(()) => break,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                    // A dying process may still be listed for a moment.
                    Err(e) if e.raw_os_error() == Some(libc::EBUSY) && tries < 50 => {
                        tries += 1;
                        std::thread::sleep(std::time::Duration::from_millis(20));
                    }
                    Err(e) => return Err(e).with_context(|| format!("removing {}", dir.display())),
                }
            }
        }
        Ok(())
    }

    /// Current usage, read from the cgroup files.
    pub fn usage(&self) -> Usage {
        let mut u = Usage::default();
        for dir in &self.dirs {
            if self.v2 {
                u.memory_bytes = read_u64(dir.join("memory.current"));
                u.memory_limit = read_u64(dir.join("memory.max"));
                u.pids = read_u64(dir.join("pids.current"));
                u.cpu_ns = std::fs::read_to_string(dir.join("cpu.stat"))
                    .ok()
                    .and_then(|s| {
                        s.lines()
                            .find_map(|l| l.strip_prefix("usage_usec "))
                            .and_then(|v| v.trim().parse::<u64>().ok())
                    })
                    .map(|us| us * 1000);
                continue;
            }
            if dir.starts_with(Path::new(CGROUP_ROOT).join("memory")) {
                u.memory_bytes = read_u64(dir.join("memory.usage_in_bytes"));
                u.memory_limit = read_u64(dir.join("memory.limit_in_bytes"));
            } else if dir.starts_with(Path::new(CGROUP_ROOT).join("cpuacct")) {
                u.cpu_ns = read_u64(dir.join("cpuacct.usage"));
            } else if dir.starts_with(Path::new(CGROUP_ROOT).join("pids")) {
                u.pids = read_u64(dir.join("pids.current"));
            }
        }
        u
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_from_the_spec() {
        assert_eq!(
            inner_path("/default/c1", false, "memory").unwrap(),
            PathBuf::from("/default/c1")
        );
        assert_eq!(
            inner_path("system.slice:cri:c1", true, "memory").unwrap(),
            PathBuf::from("/system.slice/cri-c1.scope")
        );
        assert!(inner_path("/a/../../etc", false, "memory").is_err());
        assert!(inner_path("nocolons", true, "memory").is_err());
        assert!(inner_path("rel/c1", false, "memory")
            .unwrap()
            .ends_with("rel/c1"));
    }
}
