//! A PostgreSQL server in a temporary folder.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use crate::process::{Supervisor, free_port, is_root, read_log, run, shell_quote, wait_for_port};

/// Where the server programs are looked for first: a folder holding `initdb` and `pg_ctl`.
const BIN_VARIABLE: &str = "OUTPAINT_PG_BIN";

/// The system user that runs the server when the tests run as root (`initdb` refuses root).
const SERVER_USER: &str = "postgres";

/// A PostgreSQL server on a free loopback port, its cluster in a temporary folder, tuned for
/// tests (no fsync: a crash of the machine loses nothing a test needs). Trust authentication
/// for the `postgres` user; stopped and removed when dropped or when the process exits.
#[derive(Debug)]
pub struct Postgres {
    port: u16,
    bin: PathBuf,
    databases: AtomicU32,
    /// Stops the server and removes its folder when dropped.
    _supervisor: Supervisor,
}

impl Postgres {
    /// The server of this test binary, started on first use.
    ///
    /// Panics when PostgreSQL is not installed (with how to install it) or does not start.
    pub fn shared() -> &'static Postgres {
        static SHARED: OnceLock<Postgres> = OnceLock::new();
        SHARED.get_or_init(Postgres::start)
    }

    /// Starts a server of its own (a second or so): `initdb`, then `pg_ctl start`.
    ///
    /// Panics when PostgreSQL is not installed (with how to install it) or does not start.
    pub fn start() -> Postgres {
        let bin = server_bin().unwrap_or_else(|err| panic!("{err}"));
        let dir = tempfile::Builder::new()
            .prefix("outpaint-pg-")
            .tempdir()
            .expect("cannot create a temporary folder")
            .keep();
        let data = dir.join("data");
        let log = dir.join("server.log");
        let as_server_user = if is_root() {
            run(
                Command::new("chown").arg(SERVER_USER).arg(&dir),
                "PostgreSQL must run as a user other than root",
            );
            format!("runuser -u {SERVER_USER} -- ")
        } else {
            String::new()
        };
        let pg_ctl = bin.join("pg_ctl");
        let quoted = |path: &Path| shell_quote(&path.to_string_lossy());
        // Set up first, so that a failed start below still stops and removes what it left.
        let supervisor = Supervisor::spawn(
            ":",
            &format!(
                "{as_server_user}{} -D {} -m immediate stop >/dev/null 2>&1; rm -rf {}",
                quoted(&pg_ctl),
                quoted(&data),
                quoted(&dir)
            ),
        );

        let server_command = |program: &Path| {
            let mut command = if is_root() {
                let mut command = Command::new("runuser");
                command.args(["-u", SERVER_USER, "--"]).arg(program);
                command
            } else {
                Command::new(program)
            };
            command.current_dir(&dir);
            command
        };
        run(
            server_command(&bin.join("initdb"))
                .arg("-D")
                .arg(&data)
                .args([
                    "-U",
                    "postgres",
                    "--auth=trust",
                    "-E",
                    "UTF8",
                    "--no-locale",
                ])
                .arg("--no-sync"),
            "initdb",
        );
        let port = free_port();
        let settings = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off \
             -c synchronous_commit=off -c full_page_writes=off -c max_connections=500",
            dir.display()
        );
        let started = server_command(&pg_ctl)
            .arg("-D")
            .arg(&data)
            .arg("-l")
            .arg(&log)
            .args(["-w", "-t", "60", "-o", &settings, "start"])
            .output()
            .expect("cannot run pg_ctl");
        if !started.status.success() || !wait_for_port(port, Duration::from_secs(30)) {
            panic!(
                "PostgreSQL did not start ({}):\n{}{}\n{}",
                started.status,
                String::from_utf8_lossy(&started.stdout),
                String::from_utf8_lossy(&started.stderr),
                read_log(&log)
            );
        }
        Postgres {
            port,
            bin,
            databases: AtomicU32::new(0),
            _supervisor: supervisor,
        }
    }

    /// The port it listens on, on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Creates an empty database and returns its URL
    /// (`postgres://postgres@127.0.0.1:PORT/NAME`).
    pub fn create_database(&self) -> String {
        let name = format!("test{}", self.databases.fetch_add(1, Ordering::Relaxed));
        run(
            Command::new(self.bin.join("createdb"))
                .args(["-h", "127.0.0.1", "-U", "postgres"])
                .args(["-p", &self.port.to_string()])
                .arg(&name),
            "createdb",
        );
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }
}

/// The folder holding `initdb` and `pg_ctl`: `$OUTPAINT_PG_BIN`, else the newest of Debian's
/// `/usr/lib/postgresql/<version>/bin`, else the folder of `initdb` on `PATH`.
fn server_bin() -> Result<PathBuf, String> {
    let has_programs = |dir: &Path| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file();
    if let Some(dir) = std::env::var_os(BIN_VARIABLE).map(PathBuf::from) {
        return if has_programs(&dir) {
            Ok(dir)
        } else {
            Err(format!(
                "{BIN_VARIABLE}={} holds no initdb and pg_ctl",
                dir.display()
            ))
        };
    }
    let mut debian: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse().ok()?;
            Some((version, entry.path().join("bin")))
        })
        .filter(|(_, dir)| has_programs(dir))
        .collect();
    debian.sort();
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .find(|dir| has_programs(dir));
    debian.pop().map(|(_, dir)| dir).or(on_path).ok_or_else(|| {
        format!(
            "the PostgreSQL server programs (initdb, pg_ctl) were not found in \
             /usr/lib/postgresql/<version>/bin nor on PATH; the tests start a real server. \
             Install them (Debian or Ubuntu: `apt-get install postgresql`; .ci/run does) \
             or set {BIN_VARIABLE} to the folder that holds them"
        )
    })
}
