//! Credentials: the user and group ids of a process (real, effective, saved) and its
//! supplementary groups, changed by set*id(2) under Linux's rules and inherited by fork and
//! exec.
//!
//! They are what the app sees and what a server drops to (nginx's workers become `nobody`);
//! files of the root are reached with the VMM's own rights, so they do not gate file access
//! inside the container (as in a container whose root runs as the image's owner).

use crate::errno::*;
use crate::machine::Machine;
use crate::syscalls::Kernel;

/// Most supplementary groups (Linux's NGROUPS_MAX).
const NGROUPS_MAX: usize = 65_536;
/// "Leave unchanged" in setres*id and setre*id.
const KEEP: u32 = u32::MAX;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Cred {
    pub(crate) uid: u32,
    pub(crate) euid: u32,
    pub(crate) suid: u32,
    pub(crate) gid: u32,
    pub(crate) egid: u32,
    pub(crate) sgid: u32,
    pub(crate) groups: Vec<u32>,
}

/// One kind of id: the user's or the group's (real, effective, saved).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ids {
    User,
    Group,
}

impl Cred {
    /// `uid` and `gid` as real, effective and saved ids, with supplementary `groups`.
    pub(crate) fn new(uid: u32, gid: u32, groups: Vec<u32>) -> Cred {
        Cred {
            uid,
            euid: uid,
            suid: uid,
            gid,
            egid: gid,
            sgid: gid,
            groups,
        }
    }

    fn privileged(&self) -> bool {
        self.euid == 0
    }

    fn ids(&mut self, which: Ids) -> (&mut u32, &mut u32, &mut u32) {
        match which {
            Ids::User => (&mut self.uid, &mut self.euid, &mut self.suid),
            Ids::Group => (&mut self.gid, &mut self.egid, &mut self.sgid),
        }
    }

    /// setresuid/setresgid: each id not KEEP becomes the one given; unprivileged, only to one
    /// of the current three.
    pub(crate) fn set_res(&mut self, which: Ids, r: u32, e: u32, s: u32) -> Result<(), i64> {
        let privileged = self.privileged();
        let (cr, ce, cs) = self.ids(which);
        let allowed = |v: u32| v == KEEP || privileged || v == *cr || v == *ce || v == *cs;
        if !(allowed(r) && allowed(e) && allowed(s)) {
            return Err(EPERM);
        }
        for (slot, v) in [(cr, r), (ce, e), (cs, s)] {
            if v != KEEP {
                *slot = v;
            }
        }
        Ok(())
    }

    /// setuid/setgid: privileged, all three; else only the effective one, to the real or
    /// saved id.
    pub(crate) fn set_id(&mut self, which: Ids, id: u32) -> Result<(), i64> {
        if id == KEEP {
            return Err(EINVAL);
        }
        if self.privileged() {
            return self.set_res(which, id, id, id);
        }
        self.set_res(which, KEEP, id, KEEP)
    }

    /// setreuid/setregid: the real and effective ids; the saved one follows the effective
    /// one when the real one is set or the effective one differs from the old real one.
    pub(crate) fn set_re(&mut self, which: Ids, r: u32, e: u32) -> Result<(), i64> {
        let (old_real, _, _) = self.ids(which);
        let old_real = *old_real;
        let saved = if r != KEEP || (e != KEEP && e != old_real) {
            if e != KEEP {
                e
            } else {
                KEEP
            }
        } else {
            KEEP
        };
        self.set_res(which, r, e, saved)
    }
}

impl Kernel {
    /// The arguments the container's first process was started with (/proc/1/cmdline).
    pub fn set_args(&mut self, argv: &[String]) {
        self.p.cmdline = crate::process::cmdline_of(argv);
    }

    /// The user the container's first process runs as (the OCI `process.user`).
    pub fn set_user(&mut self, uid: u32, gid: u32, groups: Vec<u32>) {
        self.p.cred = Cred::new(uid, gid, groups);
    }

    /// getresuid/getresgid: the three ids into three u32s.
    pub(crate) fn get_res(
        &mut self,
        m: &mut dyn Machine,
        which: Ids,
        at: [u64; 3],
    ) -> Result<i64, i64> {
        let c = &self.p.cred;
        let ids = match which {
            Ids::User => [c.uid, c.euid, c.suid],
            Ids::Group => [c.gid, c.egid, c.sgid],
        };
        for (va, id) in at.into_iter().zip(ids) {
            m.write(va, &id.to_le_bytes()).map_err(|_| EFAULT)?;
        }
        Ok(0)
    }

    /// getgroups(2).
    pub(crate) fn getgroups(
        &mut self,
        m: &mut dyn Machine,
        size: u64,
        list: u64,
    ) -> Result<i64, i64> {
        let groups = &self.p.cred.groups;
        if size == 0 {
            return Ok(groups.len() as i64);
        }
        if (size as usize) < groups.len() {
            return Err(EINVAL);
        }
        let bytes: Vec<u8> = groups.iter().flat_map(|g| g.to_le_bytes()).collect();
        m.write(list, &bytes).map_err(|_| EFAULT)?;
        Ok(groups.len() as i64)
    }

    /// setgroups(2): privileged only.
    pub(crate) fn setgroups(
        &mut self,
        m: &mut dyn Machine,
        size: u64,
        list: u64,
    ) -> Result<i64, i64> {
        if !self.p.cred.privileged() {
            return Err(EPERM);
        }
        let n = size as usize;
        if n > NGROUPS_MAX {
            return Err(EINVAL);
        }
        let mut bytes = vec![0u8; n * 4];
        m.read(list, &mut bytes).map_err(|_| EFAULT)?;
        self.p.cred.groups = bytes
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        Ok(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_drops_to_nobody_and_cannot_come_back() {
        let mut c = Cred::new(0, 0, Vec::new());
        c.set_id(Ids::Group, 65534).unwrap();
        c.set_id(Ids::User, 65534).unwrap();
        assert_eq!((c.uid, c.euid, c.suid), (65534, 65534, 65534));
        assert_eq!(c.set_id(Ids::User, 0), Err(EPERM));
        assert_eq!(c.set_res(Ids::User, KEEP, 0, KEEP), Err(EPERM));
    }

    #[test]
    fn an_effective_id_dropped_temporarily_comes_back_from_the_saved_one() {
        let mut c = Cred::new(0, 0, Vec::new());
        c.set_res(Ids::User, KEEP, 1000, KEEP).unwrap();
        assert_eq!((c.uid, c.euid, c.suid), (0, 1000, 0));
        // Unprivileged now, but 0 is the real and saved id.
        c.set_id(Ids::User, 0).unwrap();
        assert_eq!(c.euid, 0);
        c.set_re(Ids::User, 1000, 1000).unwrap();
        assert_eq!((c.uid, c.euid, c.suid), (1000, 1000, 1000));
    }
}
