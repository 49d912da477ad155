//! Ports, readiness and the supervising shell shared by both servers.

use std::io::Read;
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

/// A port free on the loopback interface now (the OS picks it).
pub(crate) fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("cannot bind a loopback port")
}

/// Waits until something accepts connections on `port`; `false` after `within`.
pub(crate) fn wait_for_port(port: u16, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// Runs `command` to the end; on failure, panics with its output and `what`.
pub(crate) fn run(command: &mut Command, what: &str) {
    let output = command
        .output()
        .unwrap_or_else(|err| panic!("{what}: cannot run {command:?}: {err}"));
    if !output.status.success() {
        panic!(
            "{what}: {command:?} failed ({}):\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

/// The contents of a log file, for a failure message.
pub(crate) fn read_log(path: &Path) -> String {
    let mut log = String::new();
    if let Ok(mut file) = std::fs::File::open(path) {
        let _ = file.read_to_string(&mut log);
    }
    log
}

/// A shell that runs `cleanup` (a shell script) once its standard input closes: when this
/// value is dropped, or when the process exits in any way. It ignores the terminal's
/// interrupt, so that a Ctrl-C of the tests still cleans up.
#[derive(Debug)]
pub(crate) struct Supervisor {
    child: Child,
    stdin: Option<ChildStdin>,
}

impl Supervisor {
    /// Starts the shell; `script` runs first (in the background, for a server), then the
    /// shell waits for its input to close and runs `cleanup`.
    pub(crate) fn spawn(script: &str, cleanup: &str) -> Supervisor {
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "trap '' INT HUP; {script}\nread _ignored\n{cleanup}"
            ))
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("cannot start sh");
        let stdin = child.stdin.take();
        Supervisor { child, stdin }
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.wait();
    }
}

/// Whether this process runs as root (PostgreSQL refuses to).
pub(crate) fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|meta| meta.uid() == 0)
}

/// Quotes `value` for a POSIX shell.
pub(crate) fn shell_quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', r"'\''"))
}
