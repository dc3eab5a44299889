//! A containerd of a test's (or benchmark's) own: Debian's daemon with its own root, state,
//! socket and namespace, the busybox image of `scripts/oci-image.sh` imported, and `ctr`
//! pointed at it. Its runc shim runs runc or, through `--runc-binary`, qvisor.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// The image `import_busybox` makes.
pub const BUSYBOX_IMAGE: &str = "docker.io/quark/busybox:latest";

pub struct Containerd {
    pub dir: PathBuf,
    daemon: Child,
    socket: PathBuf,
    namespace: String,
}

impl Containerd {
    /// Starts the daemon under a fresh directory named after `tag`, and waits until it answers.
    pub fn start(tag: &str) -> anyhow::Result<Containerd> {
        for tool in ["containerd", "ctr"] {
            Command::new(tool)
                .arg("--version")
                .output()
                .with_context(|| format!("{tool} is needed: run scripts/setup.sh"))?;
        }
        let id = format!("{tag}-{}-{}", std::process::id(), crate::unique_suffix());
        let dir = std::env::temp_dir().join(format!("ctrd-{id}"));
        std::fs::create_dir_all(&dir)?;
        let socket = dir.join("containerd.sock");
        let config = format!(
            "version = 2\nroot = \"{0}/root\"\nstate = \"{0}/state\"\n\
             disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
             [grpc]\n  address = \"{1}\"\n[ttrpc]\n  address = \"{1}.ttrpc\"\n",
            dir.display(),
            socket.display()
        );
        std::fs::write(dir.join("config.toml"), config)?;
        let daemon = Command::new("containerd")
            .arg("--config")
            .arg(dir.join("config.toml"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("containerd.log"))?)
            .spawn()
            .context("starting containerd")?;
        let c = Containerd {
            dir,
            daemon,
            socket,
            namespace: format!("quark-{id}"),
        };
        let end = Instant::now() + Duration::from_secs(20);
        while !c.ctr(&["version"])?.status.success() {
            if Instant::now() >= end {
                bail!(
                    "containerd did not come up (see {}/containerd.log)",
                    c.dir.display()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(c)
    }

    /// Builds the busybox image with scripts/oci-image.sh and imports it as [`BUSYBOX_IMAGE`].
    pub fn import_busybox(&self) -> anyhow::Result<()> {
        let tar = self.dir.join("busybox.tar");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/oci-image.sh");
        let o = Command::new("bash")
            .arg(&script)
            .arg(&tar)
            .arg(BUSYBOX_IMAGE)
            .output()?;
        if !o.status.success() {
            bail!("oci-image.sh: {}", String::from_utf8_lossy(&o.stderr));
        }
        self.ok(&["image", "import", &tar.display().to_string()])
            .map(drop)
    }

    /// `ctr` with this daemon's address and namespace, then `args`.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("ctr");
        cmd.arg("--address")
            .arg(&self.socket)
            .args(["--namespace", &self.namespace])
            .args(args);
        cmd
    }

    pub fn ctr(&self, args: &[&str]) -> anyhow::Result<Output> {
        self.command(args)
            .stdin(Stdio::null())
            .output()
            .context("running ctr")
    }

    /// Runs `ctr args`, which must succeed; its stdout.
    pub fn ok(&self, args: &[&str]) -> anyhow::Result<String> {
        let o = self.ctr(args)?;
        if !o.status.success() {
            bail!(
                "ctr {args:?}: {}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&o.stdout).to_string())
    }

    /// ctr's options choosing the runtime: runc, or the runc-compatible binary `qvisor` if
    /// given; each with a state root of its own under this daemon's directory.
    pub fn runtime_args(&self, qvisor: Option<&Path>) -> Vec<String> {
        let name = if qvisor.is_some() { "qvisor" } else { "runc" };
        let mut a = vec![
            "--runc-root".to_string(),
            self.dir
                .join(format!("runc-root-{name}"))
                .display()
                .to_string(),
        ];
        if let Some(q) = qvisor {
            a.extend(["--runc-binary".to_string(), q.display().to_string()]);
        }
        a
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // SAFETY: signals the daemon we started.
        unsafe { libc::kill(self.daemon.id() as i32, libc::SIGTERM) };
        let _ = self.daemon.wait();
        // Shims outlive their daemon by design; ours are named by our socket.
        let _ = Command::new("pkill")
            .args(["-f", &self.socket.display().to_string()])
            .status();
        let _ = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "grep -o ' {}/[^ ]*' /proc/mounts | sort -r | xargs -r -n1 umount -l",
                self.dir.display()
            ))
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
