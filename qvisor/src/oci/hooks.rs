//! OCI hooks: each runs with the container's state JSON on stdin, its own args and env, and an
//! optional timeout.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use oci_spec::runtime::Hook;

/// The lifecycle points of the spec, in the order they happen.
#[derive(Debug, Clone, Copy)]
pub enum Point {
    CreateRuntime,
    CreateContainer,
    StartContainer,
    Poststart,
    Poststop,
}

impl Point {
    fn name(self) -> &'static str {
        match self {
            Point::CreateRuntime => "createRuntime",
            Point::CreateContainer => "createContainer",
            Point::StartContainer => "startContainer",
            Point::Poststart => "poststart",
            Point::Poststop => "poststop",
        }
    }

    /// Hooks of this point in `hooks` (`prestart`, deprecated, runs with createRuntime).
    fn of(self, hooks: &oci_spec::runtime::Hooks) -> Vec<Hook> {
        let list = |h: &Option<Vec<Hook>>| h.clone().unwrap_or_default();
        #[allow(deprecated)]
        match self {
            Point::CreateRuntime => [list(hooks.prestart()), list(hooks.create_runtime())].concat(),
            Point::CreateContainer => list(hooks.create_container()),
            Point::StartContainer => list(hooks.start_container()),
            Point::Poststart => list(hooks.poststart()),
            Point::Poststop => list(hooks.poststop()),
        }
    }
}

/// Runs the hooks of `point` in order, stopping at the first failure.
pub fn run(
    hooks: Option<&oci_spec::runtime::Hooks>,
    point: Point,
    state_json: &[u8],
) -> anyhow::Result<()> {
    let Some(hooks) = hooks else { return Ok(()) };
    for hook in point.of(hooks) {
        run_one(&hook, state_json)
            .with_context(|| format!("{} hook {}", point.name(), hook.path().display()))?;
    }
    Ok(())
}

/// Runs the hooks of `point`, logging failures instead of failing (poststart and poststop:
/// the spec says the lifecycle goes on).
pub fn run_warn(hooks: Option<&oci_spec::runtime::Hooks>, point: Point, state_json: &[u8]) {
    if let Err(e) = run(hooks, point, state_json) {
        tracing::warn!("{e:#}");
    }
}

fn run_one(hook: &Hook, state_json: &[u8]) -> anyhow::Result<()> {
    let args = hook.args().clone().unwrap_or_default();
    let mut cmd = Command::new(hook.path());
    if let Some(arg0) = args.first() {
        std::os::unix::process::CommandExt::arg0(&mut cmd, arg0);
    }
    cmd.args(args.iter().skip(1)).env_clear();
    for kv in hook.env().iter().flatten() {
        if let Some((k, v)) = kv.split_once('=') {
            cmd.env(k, v);
        }
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting it")?;
    if let Some(mut stdin) = child.stdin.take() {
        // A hook that does not read its stdin is fine.
        let _ = stdin.write_all(state_json);
    }
    let deadline = hook
        .timeout()
        .filter(|t| *t > 0)
        .map(|t| Instant::now() + Duration::from_secs(t as u64));
    loop {
        if let Some(status) = child.try_wait()? {
            if status.success() {
                return Ok(());
            }
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut err);
            }
            bail!("failed ({status}): {}", err.trim());
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            let _ = child.kill();
            let _ = child.wait();
            bail!("timed out after {}s", hook.timeout().unwrap_or(0));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}
