//! Nothing `shoal up` starts outlives it, however it ends — SIGKILL included.
//!
//! Every child (the control plane, the apps, the sidecars) runs in one process group of its own, led by a
//! small guard process (`shoal up-guard`, this same executable). The guard's standard input is a pipe whose
//! only writer is `shoal up`; when `shoal up` exits for any reason the kernel closes it, the guard reads end
//! of file and sends SIGKILL to the whole group. That also reaches grandchildren (an app started through a
//! shell, and whatever it starts), which PR_SET_PDEATHSIG on the direct children would not: they stay in the
//! group unless they leave it themselves (`setsid`). On a normal stop `shoal up` stops its children in order
//! first and only then lets the guard sweep what is left.
//!
//! The group is not the terminal's foreground group, so a terminal's Ctrl-C reaches only `shoal up`, which
//! then stops everything in order.

use std::io::Read;
use std::path::Path;
use std::process::{ExitCode, Stdio};

use rustix::process::{Pid, Signal};
use tokio::process::{Child, ChildStdin, Command};

/// The running guard: the process group every child joins.
pub(crate) struct Guard {
    child: Child,
    /// The pipe the guard watches: dropping it is the signal to sweep the group.
    stdin: Option<ChildStdin>,
    /// The guard's process id, which is also the group's id.
    pub(crate) pgid: u32,
}

impl Guard {
    /// Starts the guard (`self_exe up-guard`) as the leader of a new process group.
    pub(crate) fn start(self_exe: &Path) -> Result<Self, String> {
        let mut cmd = Command::new(self_exe);
        cmd.arg("up-guard")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Not `kill_on_drop`: a guard dropped without `sweep` (a panic) must still sweep the group,
            // which it does when the pipe closes with the drop.
            .process_group(0);
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start the process-group guard: {e}"))?;
        let pgid = child.id().ok_or("the process-group guard exited at once")?;
        let stdin = child.stdin.take();
        Ok(Self { child, stdin, pgid })
    }

    /// Whether the guard has exited (then nothing would sweep the group if `shoal up` died).
    pub(crate) fn exited(&mut self) -> bool {
        self.child.try_wait().ok().flatten().is_some()
    }

    /// Kills whatever is still in the group (grandchildren included), the guard with it, and reaps it.
    pub(crate) async fn sweep(mut self) {
        // Closing the pipe is the guard's cue; signalling the group as well does not wait for it to notice.
        drop(self.stdin.take());
        if let Some(pgid) = Pid::from_raw(self.pgid as i32) {
            let _ = rustix::process::kill_process_group(pgid, Signal::KILL);
        }
        let _ = self.child.wait().await;
    }
}

/// `shoal up-guard`: waits until its standard input closes (`shoal up` exited), then SIGKILLs its own
/// process group.
pub fn main() -> ExitCode {
    let mut stdin = std::io::stdin();
    let mut buf = [0u8; 64];
    loop {
        match stdin.read(&mut buf) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    let _ = rustix::process::kill_current_process_group(Signal::KILL);
    ExitCode::SUCCESS
}
