//! The embedded store: the node's state in one JSON file, replaced atomically (write a
//! temporary file, fsync, rename, fsync the directory), so a crash leaves the old state or the
//! new one, never a torn file.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::model::State;

pub struct StateFile {
    path: PathBuf,
}

impl StateFile {
    pub fn new(path: &Path) -> StateFile {
        StateFile {
            path: path.to_path_buf(),
        }
    }

    /// The stored state; empty if there is no file yet.
    pub fn load(&self) -> Result<State> {
        match fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .with_context(|| format!("state file {} is not valid", self.path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(State::default()),
            Err(e) => Err(e).with_context(|| format!("reading {}", self.path.display())),
        }
    }

    pub fn save(&self, state: &State) -> Result<()> {
        let dir = match self.path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let tmp = self.path.with_extension("tmp");
        let write = || -> std::io::Result<()> {
            let mut f = File::create(&tmp)?;
            f.write_all(&serde_json::to_vec_pretty(state)?)?;
            f.sync_all()?;
            fs::rename(&tmp, &self.path)?;
            File::open(dir)?.sync_all()
        };
        write().with_context(|| format!("writing state file {}", self.path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Vpc, VpcSpec};

    #[test]
    fn state_survives_a_save_and_a_bad_file_is_a_clear_error() {
        let dir = std::env::temp_dir().join(format!("qnetd-store-{}", std::process::id()));
        let file = StateFile::new(&dir.join("state.json"));
        assert_eq!(file.load().unwrap(), State::default());
        let mut s = State::default();
        let vpc: Vpc = s
            .check_vpc(&VpcSpec {
                name: "red".into(),
                vni: 5,
                cidr: "10.5.0.0/16".parse().unwrap(),
                gateway: None,
            })
            .unwrap();
        s.vpcs.insert(vpc.name.clone(), vpc);
        file.save(&s).unwrap();
        assert_eq!(file.load().unwrap(), s);
        fs::write(dir.join("state.json"), b"{not json").unwrap();
        let err = format!("{:#}", file.load().unwrap_err());
        assert!(err.contains("is not valid"), "{err}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
