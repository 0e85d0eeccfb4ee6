//! Spawning children from one long-lived thread, tied to the test process's lifetime.

use std::io;
use std::process::{Child, Command};
use std::sync::OnceLock;
use std::sync::mpsc::{Sender, channel};

type Request = (Command, Sender<io::Result<Child>>);

/// Spawns `cmd` so that the child gets SIGKILL when this test process dies.
pub(crate) fn spawn_tied(mut cmd: Command) -> io::Result<Child> {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::process::CommandExt;
        let parent = std::process::id() as libc::pid_t;
        // SAFETY: the closure only calls async-signal-safe functions (prctl, getppid).
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(
                    libc::PR_SET_PDEATHSIG,
                    libc::SIGKILL as libc::c_ulong,
                    0,
                    0,
                    0,
                ) == -1
                {
                    return Err(io::Error::last_os_error());
                }
                // The parent may have died between fork and prctl; then nobody would kill us.
                if libc::getppid() != parent {
                    return Err(io::Error::other("test process exited during spawn"));
                }
                Ok(())
            });
        }
    }
    let (reply_tx, reply_rx) = channel();
    spawner()
        .send((cmd, reply_tx))
        .expect("test-support spawner thread is gone");
    reply_rx
        .recv()
        .expect("test-support spawner thread dropped a request")
}

/// The dedicated spawner thread; it lives as long as the process, so PDEATHSIG means "process died".
fn spawner() -> &'static Sender<Request> {
    static SPAWNER: OnceLock<Sender<Request>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (tx, rx) = channel::<Request>();
        std::thread::Builder::new()
            .name("test-support-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("cannot start test-support spawner thread");
        tx
    })
}

/// Sends `signal` to a child that has not been reaped yet (so its pid cannot have been reused).
pub(crate) fn signal(pid: u32, signal: libc::c_int) {
    // SAFETY: plain syscall; callers guarantee `pid` is an unreaped child of ours.
    unsafe {
        libc::kill(pid as libc::pid_t, signal);
    }
}
