//! An S3-protocol server: moto's standalone server (`python3 -m moto.server`, from PyPI's
//! `moto[server]`), in memory, on a free loopback port. It accepts any credentials.

use std::process::Command;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use crate::process::{Supervisor, free_port, read_log, shell_quote, wait_for_port};

/// The Python that runs moto; `python3` when unset.
const PYTHON_VARIABLE: &str = "OUTPAINT_PYTHON";

/// A running S3-protocol server; stopped when dropped or when the process exits.
#[derive(Debug)]
pub struct S3Server {
    port: u16,
    buckets: AtomicU32,
    /// Stops the server and removes its folder when dropped.
    _supervisor: Supervisor,
}

impl S3Server {
    /// The server of this test binary, started on first use.
    ///
    /// Panics when moto is not installed (with how to install it) or does not start.
    pub fn shared() -> &'static S3Server {
        static SHARED: OnceLock<S3Server> = OnceLock::new();
        SHARED.get_or_init(S3Server::start)
    }

    /// Starts a server of its own (a second or two: Python imports).
    ///
    /// Panics when moto is not installed (with how to install it) or does not start.
    pub fn start() -> S3Server {
        let python = std::env::var(PYTHON_VARIABLE).unwrap_or_else(|_| "python3".into());
        let importable = Command::new(&python)
            .args(["-c", "import moto.server"])
            .output()
            .is_ok_and(|output| output.status.success());
        if !importable {
            panic!(
                "moto's S3 server is not installed for {python}; the tests start a real \
                 S3-protocol server. Install it with `{python} -m pip install 'moto[server]'` \
                 (.ci/run installs the release it pins), or set {PYTHON_VARIABLE} to a Python \
                 that has it"
            );
        }
        let dir = tempfile::Builder::new()
            .prefix("outpaint-s3-")
            .tempdir()
            .expect("cannot create a temporary folder")
            .keep();
        let log = dir.join("moto.log");
        let port = free_port();
        let supervisor = Supervisor::spawn(
            &format!(
                "{} -m moto.server -H 127.0.0.1 -p {port} </dev/null >{} 2>&1 & server=$!",
                shell_quote(&python),
                shell_quote(&log.to_string_lossy())
            ),
            &format!(
                "kill $server; wait $server; rm -rf {}",
                shell_quote(&dir.to_string_lossy())
            ),
        );
        if !wait_for_port(port, Duration::from_secs(60)) {
            panic!("moto's S3 server did not start:\n{}", read_log(&log));
        }
        S3Server {
            port,
            buckets: AtomicU32::new(0),
            _supervisor: supervisor,
        }
    }

    /// The endpoint URL, `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Creates an empty bucket (in region us-east-1) and returns its name.
    pub async fn create_bucket(&self) -> String {
        let name = format!("test-{}", self.buckets.fetch_add(1, Ordering::Relaxed));
        let response = reqwest::Client::new()
            .put(format!("{}/{name}", self.endpoint()))
            .send()
            .await
            .expect("cannot reach the S3 server");
        assert!(
            response.status().is_success(),
            "creating bucket {name}: {}",
            response.status()
        );
        name
    }
}
