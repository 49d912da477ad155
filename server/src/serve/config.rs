//! `outpaint serve`'s flags (each also read from an `OUTPAINT_*` environment variable), and the
//! accounts file.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use serde::Deserialize;

use crate::cli::{BackendArgs, LimitsArgs};

/// Flags of `outpaint serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address and port to listen on. 0.0.0.0 listens on every interface; port 0 picks a free
    /// port. The first line on stdout says where it listens: `listening on http://IP:PORT`.
    #[arg(
        long,
        env = "OUTPAINT_BIND",
        value_name = "ADDR",
        default_value = "127.0.0.1:8080"
    )]
    pub bind: SocketAddr,

    /// Folder of the task database (tasks.sqlite) and the result images; created if missing.
    /// Keep it on a local disk: the queue's durability is the disk's.
    #[arg(
        long,
        env = "OUTPAINT_DATA_DIR",
        value_name = "DIR",
        default_value = "data"
    )]
    pub data_dir: PathBuf,

    /// Base of the result URLs handed to clients, as they reach this server (e.g.
    /// https://expand.example.com behind a proxy) [default: the listening address].
    #[arg(long, env = "OUTPAINT_PUBLIC_URL", value_name = "URL")]
    pub public_url: Option<String>,

    /// Access key of an account (Kling's AK). Repeat with --secret-key for several accounts,
    /// pairs in order; in the environment, comma-separated. With no keys at all, authentication
    /// is off and every request acts as one anonymous account (local, single-user use).
    #[arg(
        long,
        env = "OUTPAINT_ACCESS_KEY",
        value_name = "AK",
        value_delimiter = ','
    )]
    pub access_key: Vec<String>,

    /// Secret key of the account given by the --access-key in the same position (Kling's SK):
    /// it signs the account's JWTs (HS256).
    #[arg(
        long,
        env = "OUTPAINT_SECRET_KEY",
        value_name = "SK",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub secret_key: Vec<String>,

    /// A TOML file of more accounts: `[[account]]` tables with `access_key` and `secret_key`.
    #[arg(long, env = "OUTPAINT_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Sign callbacks with this secret (Standard Webhooks: webhook-id, webhook-timestamp and
    /// webhook-signature headers). A value starting with `whsec_` is base64 of the key, as
    /// Standard Webhooks libraries expect; any other value is the key itself.
    #[arg(
        long,
        env = "OUTPAINT_WEBHOOK_SECRET",
        value_name = "SECRET",
        hide_env_values = true
    )]
    pub webhook_secret: Option<String>,

    /// Let image and callback URLs reach loopback, private and link-local addresses. Off by
    /// default, so that a client cannot make the server fetch from or post to its own network.
    #[arg(long, env = "OUTPAINT_ALLOW_PRIVATE_URLS")]
    pub allow_private_urls: bool,

    /// Serve HTTPS with this certificate chain (PEM); needs --tls-key.
    #[arg(
        long,
        env = "OUTPAINT_TLS_CERT",
        value_name = "PEM",
        requires = "tls_key"
    )]
    pub tls_cert: Option<PathBuf>,

    /// Private key (PEM) of --tls-cert.
    #[arg(
        long,
        env = "OUTPAINT_TLS_KEY",
        value_name = "PEM",
        requires = "tls_cert"
    )]
    pub tls_key: Option<PathBuf>,

    /// Tasks generated at the same time. Each generation already spreads over every CPU, so 1
    /// suits a CPU machine; more help when generation waits on a GPU. 0 makes this node only
    /// accept tasks (another node's workers process them).
    #[arg(long, env = "OUTPAINT_WORKERS", value_name = "N", default_value_t = 1)]
    pub workers: usize,

    /// Most tasks waiting in the queue. Past it, creates are refused with 429 / 1303 instead of
    /// letting waits grow without bound.
    #[arg(
        long,
        env = "OUTPAINT_MAX_QUEUED",
        value_name = "N",
        default_value_t = 1000
    )]
    pub max_queued: u64,

    /// Most unfinished tasks (waiting or running) one account may have; past it, 429 / 1303.
    /// Keeps one busy client from filling the queue for everyone.
    #[arg(
        long,
        env = "OUTPAINT_MAX_TASKS_PER_ACCOUNT",
        value_name = "N",
        default_value_t = 100
    )]
    pub max_tasks_per_account: u64,

    /// Most requests per second one account may make, averaged over a burst of as many; past
    /// it, 429 / 1302. 0 is no limit.
    #[arg(
        long,
        env = "OUTPAINT_RATE_LIMIT",
        value_name = "PER_SECOND",
        default_value_t = 0.0
    )]
    pub rate_limit: f64,

    /// Seconds a worker holds a task without a heartbeat. A task whose worker died (crash,
    /// kill -9, power loss) is taken again once this runs out: shorter recovers sooner, but too
    /// short for a stalled disk makes tasks run twice.
    #[arg(long, env = "OUTPAINT_LEASE_SECS", value_name = "SECONDS", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub lease_secs: u64,

    /// Times a task is tried (counting runs cut off by a crash) before it ends `failed`.
    #[arg(long, env = "OUTPAINT_MAX_ATTEMPTS", value_name = "N", default_value_t = 3,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_attempts: u32,

    /// Days finished tasks and their result images are kept; then both are deleted and result
    /// URLs stop working.
    #[arg(
        long,
        env = "OUTPAINT_RETENTION_DAYS",
        value_name = "DAYS",
        default_value_t = 30.0
    )]
    pub retention_days: f64,

    /// On SIGTERM or Ctrl-C, seconds running tasks get to finish before they are handed back
    /// to the queue (taken again at the next start, not counted as an attempt).
    #[arg(
        long,
        env = "OUTPAINT_SHUTDOWN_GRACE_SECS",
        value_name = "SECONDS",
        default_value_t = 30
    )]
    pub shutdown_grace_secs: u64,

    /// Largest request body, in MB. A base64 image is 4/3 of its file size, so keep it above
    /// --max-file-mb × 1.34. Larger bodies are refused with 400 / 1200.
    #[arg(
        long,
        env = "OUTPAINT_MAX_BODY_MB",
        value_name = "MB",
        default_value_t = 16.0
    )]
    pub max_body_mb: f64,

    /// Seconds a request may take (including fetching an image URL) before it is answered with
    /// 504 / 5002.
    #[arg(
        long,
        env = "OUTPAINT_REQUEST_TIMEOUT_SECS",
        value_name = "SECONDS",
        default_value_t = 60
    )]
    pub request_timeout_secs: u64,

    /// Seconds allowed to download an image URL.
    #[arg(
        long,
        env = "OUTPAINT_FETCH_TIMEOUT_SECS",
        value_name = "SECONDS",
        default_value_t = 20
    )]
    pub fetch_timeout_secs: u64,

    /// Wait for the disk on every commit (SQLite synchronous=FULL), so that acknowledged tasks
    /// survive a power loss, not only a crash. Costs a few milliseconds per create on most disks.
    #[arg(long, env = "OUTPAINT_DURABLE_COMMITS", default_value_t = true, action = clap::ArgAction::Set,
          value_name = "BOOL")]
    pub durable_commits: bool,

    #[command(flatten)]
    pub backend: BackendArgs,

    /// Log format on stderr: human (coloured on a terminal) or json (one object per line).
    #[arg(
        long,
        env = "OUTPAINT_LOG_FORMAT",
        value_name = "FORMAT",
        default_value = "human"
    )]
    pub log_format: LogFormat,

    #[command(flatten)]
    pub limits: LimitsArgs,
}

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Human,
    Json,
}

impl ServeArgs {
    pub fn lease(&self) -> Duration {
        Duration::from_secs(self.lease_secs)
    }

    pub fn retention(&self) -> Duration {
        Duration::from_secs_f64((self.retention_days * 86_400.0).clamp(0.0, 1e12))
    }

    pub fn max_body_bytes(&self) -> usize {
        (self.max_body_mb * 1024.0 * 1024.0).clamp(1024.0, 4e9) as usize
    }

    /// The accounts: access key → secret key, from the flags and the config file. Empty means
    /// authentication is off.
    pub fn accounts(&self) -> Result<BTreeMap<String, String>> {
        if self.access_key.len() != self.secret_key.len() {
            bail!(
                "{} --access-key but {} --secret-key: give them in pairs",
                self.access_key.len(),
                self.secret_key.len()
            );
        }
        let mut accounts = BTreeMap::new();
        let pairs = self
            .access_key
            .iter()
            .cloned()
            .zip(self.secret_key.iter().cloned());
        let from_file = match &self.config {
            Some(path) => read_accounts_file(path)?,
            None => Vec::new(),
        };
        for (access, secret) in pairs.chain(from_file) {
            let access = access.trim().to_string();
            if access.is_empty() || secret.is_empty() {
                bail!("an access key or secret key is empty");
            }
            if accounts.insert(access.clone(), secret).is_some() {
                bail!("access key {access} is configured twice");
            }
        }
        Ok(accounts)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AccountsFile {
    #[serde(default)]
    account: Vec<AccountEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AccountEntry {
    access_key: String,
    secret_key: String,
}

fn read_accounts_file(path: &Path) -> Result<Vec<(String, String)>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read", path.display()))?;
    let file: AccountsFile = toml::from_str(&text)
        .with_context(|| format!("{}: not a valid accounts file", path.display()))?;
    Ok(file
        .account
        .into_iter()
        .map(|a| (a.access_key, a.secret_key))
        .collect())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use crate::cli::{Cli, Command};

    fn serve(args: &[&str]) -> super::ServeArgs {
        let cli = Cli::try_parse_from([&["outpaint", "serve"], args].concat()).unwrap();
        let Command::Serve(args) = cli.command else {
            panic!("serve")
        };
        *args
    }

    #[test]
    fn keys_pair_up_in_order_and_the_file_adds_accounts() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("accounts.toml");
        std::fs::write(
            &file,
            "[[account]]\naccess_key = \"ak3\"\nsecret_key = \"sk3\"\n",
        )
        .unwrap();
        let args = serve(&[
            "--access-key",
            "ak1",
            "--secret-key",
            "sk1",
            "--access-key",
            "ak2",
            "--secret-key",
            "sk2",
            "--config",
            file.to_str().unwrap(),
        ]);
        let accounts = args.accounts().unwrap();
        assert_eq!(accounts.len(), 3);
        assert_eq!(accounts["ak2"], "sk2");
        assert_eq!(accounts["ak3"], "sk3");
    }

    #[test]
    fn unpaired_or_repeated_keys_are_refused() {
        assert!(serve(&["--access-key", "a"]).accounts().is_err());
        let twice = serve(&[
            "--access-key",
            "a",
            "--secret-key",
            "x",
            "--access-key",
            "a",
            "--secret-key",
            "y",
        ]);
        assert!(twice.accounts().unwrap_err().to_string().contains("twice"));
    }

    #[test]
    fn no_keys_means_no_accounts() {
        assert!(serve(&[]).accounts().unwrap().is_empty());
    }
}
