//! What every `serve` test needs: the server as a child process (started, killed, restarted on
//! the same data folder and port), an HTTP client that speaks the Kling envelope, JWTs, test
//! images, and a local HTTP server that records callbacks and serves images by URL.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Cursor, Read};
use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::IntoResponse;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac};
use image::{DynamicImage, ImageFormat, Rgb, RgbImage};
use serde_json::{Value, json};
use sha2::Sha256;

/// How long the server may take to print its `listening on` line.
const START_TIMEOUT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------------
// The server process
// ---------------------------------------------------------------------------------------------

/// Flags and environment for one `outpaint serve`; [`ServerBuilder::start`] runs it.
#[derive(Clone, Default)]
pub struct ServerBuilder {
    args: Vec<String>,
    envs: Vec<(String, String)>,
}

impl ServerBuilder {
    /// Adds command-line arguments after `serve --bind … --data-dir …`.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Adds one `--access-key AK --secret-key SK` pair (turns authentication on).
    pub fn key(self, access_key: &str, secret_key: &str) -> Self {
        self.args(["--access-key", access_key, "--secret-key", secret_key])
    }

    /// Sets an environment variable for the child (all other OUTPAINT_* variables are removed).
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.envs.push((key.into(), value.into()));
        self
    }

    /// Starts the server on `127.0.0.1:0` in a fresh temporary data folder.
    pub fn start(self) -> Server {
        let data_dir = tempfile::tempdir().expect("a temporary data folder");
        let mut server = Server {
            child: None,
            addr: "127.0.0.1:0".parse().unwrap(),
            url: String::new(),
            data_dir,
            builder: self,
            stderr: Arc::new(Mutex::new(Vec::new())),
        };
        server.spawn("127.0.0.1:0");
        server
    }
}

/// A running `outpaint serve`, killed (SIGKILL) when dropped. When the test is failing, its
/// stderr (the server's log) is printed then.
pub struct Server {
    child: Option<Child>,
    /// The address from the `listening on` line.
    pub addr: SocketAddr,
    /// `http://IP:PORT` (`https://` with TLS), without a trailing slash.
    pub url: String,
    data_dir: tempfile::TempDir,
    builder: ServerBuilder,
    stderr: Arc<Mutex<Vec<u8>>>,
}

/// A server with no flags but the harness's own: authentication off, `infill`, one worker.
pub fn server() -> ServerBuilder {
    ServerBuilder::default()
}

impl Server {
    /// What the server wrote on stderr so far.
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned()
    }

    /// A client for this server, without credentials.
    pub fn api(&self) -> Api {
        Api::new(&self.url)
    }

    /// A client for this server that signs each request as `access_key`.
    pub fn api_as(&self, access_key: &str, secret_key: &str) -> Api {
        Api::new(&self.url).with_key(access_key, secret_key)
    }

    /// Kills the server with SIGKILL (no chance to clean up) and reaps it.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            // `Child::kill` sends SIGKILL on Unix.
            child.kill().expect("SIGKILL the server");
            child.wait().expect("reap the server");
        }
    }

    /// Sends SIGTERM and waits up to `timeout` for the server to exit.
    pub fn sigterm(&mut self, timeout: Duration) -> ExitStatus {
        let mut child = self.child.take().expect("the server is running");
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -TERM failed");
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait().expect("wait for the server") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "the server did not exit within {timeout:?} of SIGTERM; stderr:\n{}",
                    tail(&self.stderr(), 8000)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the server again (SIGKILL first if it still runs) on the same data folder and
    /// the same port, with the same flags.
    pub fn restart(&mut self) {
        self.kill9();
        let bind = self.addr.to_string();
        self.spawn(&bind);
    }

    /// As [`Server::restart`], with `args` replacing the builder's extra arguments.
    pub fn restart_with<I, S>(&mut self, args: I)
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.builder.args = args.into_iter().map(Into::into).collect();
        self.restart();
    }

    /// Runs `outpaint serve --bind BIND --data-dir DIR ARGS…` and waits for its first stdout line.
    /// Binding a port the previous process just held can fail for a moment: retried for 10 s.
    fn spawn(&mut self, bind: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.try_spawn(bind) {
                Ok(()) => return,
                Err(why) if bind.ends_with(":0") || Instant::now() > deadline => {
                    panic!("outpaint serve did not start: {why}")
                }
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }

    fn try_spawn(&mut self, bind: &str) -> Result<(), String> {
        let mut command = Command::new(env!("CARGO_BIN_EXE_outpaint"));
        command
            .arg("serve")
            .args(["--bind", bind])
            .arg("--data-dir")
            .arg(self.data_dir.path())
            .args(&self.builder.args)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("OUTPAINT_") {
                command.env_remove(key);
            }
        }
        for (key, value) in &self.builder.envs {
            command.env(key, value);
        }
        let mut child = command.spawn().map_err(|e| format!("cannot run: {e}"))?;

        // Drain stderr into a buffer for the whole life of the child, so that the pipe never
        // fills and the log can be shown when a test fails.
        let stderr = Arc::new(Mutex::new(Vec::new()));
        self.stderr = stderr.clone();
        let mut err_pipe = child.stderr.take().unwrap();
        let stderr_task = std::thread::spawn(move || {
            let mut chunk = [0u8; 8192];
            while let Ok(n) = err_pipe.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                stderr.lock().unwrap().extend_from_slice(&chunk[..n]);
            }
        });

        let (line_sender, line_receiver) = mpsc::channel();
        let out_pipe = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(out_pipe).lines();
            let first = lines.next();
            let _ = line_sender.send(first);
            // Keep draining stdout so that the child never blocks on a full pipe.
            for _ in lines {}
        });

        let first = line_receiver.recv_timeout(START_TIMEOUT);
        let line = match first {
            Ok(Some(Ok(line))) => line,
            other => {
                let _ = child.kill();
                let _ = child.wait();
                let _ = stderr_task.join();
                return Err(format!(
                    "no `listening on` line within {START_TIMEOUT:?} ({other:?}); stderr:\n{}",
                    tail(&self.stderr(), 8000)
                ));
            }
        };
        let parsed = ["http", "https"].into_iter().find_map(|scheme| {
            let rest = line.strip_prefix(&format!("listening on {scheme}://"))?;
            let addr = rest.trim_end_matches('/').parse::<SocketAddr>().ok()?;
            Some((scheme, addr))
        });
        let Some((scheme, addr)) = parsed else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "the first stdout line is {line:?}, not `listening on http(s)://IP:PORT`"
            ));
        };
        assert!(
            addr.ip().is_loopback(),
            "bound to {addr}, asked for 127.0.0.1"
        );
        assert_ne!(addr.port(), 0, "the line must carry the real port");
        self.addr = addr;
        self.url = format!("{scheme}://{addr}");
        self.child = Some(child);
        Ok(())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            eprintln!(
                "--- outpaint serve stderr (last 8000 bytes) ---\n{}",
                tail(&self.stderr(), 8000)
            );
        }
    }
}

fn tail(text: &str, max: usize) -> &str {
    let mut start = text.len().saturating_sub(max);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

/// A free loopback port, for a server that starts later. Nothing listens there meanwhile, so
/// connections to it are refused.
pub fn reserve_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

// ---------------------------------------------------------------------------------------------
// Authentication
// ---------------------------------------------------------------------------------------------

/// Unix seconds now.
pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Unix milliseconds now.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// A Kling token as the official SDK makes it: HS256, `{"iss", "exp": now+1800, "nbf": now-5}`.
pub fn jwt(access_key: &str, secret_key: &str) -> String {
    jwt_with(access_key, secret_key, now() + 1800, now() - 5)
}

/// A token with chosen `exp` and `nbf` (Unix seconds).
pub fn jwt_with(access_key: &str, secret_key: &str, exp: i64, nbf: i64) -> String {
    jwt_claims(
        secret_key,
        &json!({"iss": access_key, "exp": exp, "nbf": nbf}),
    )
}

/// A token with any claims, HS256-signed with `secret_key`.
pub fn jwt_claims(secret_key: &str, claims: &Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret_key.as_bytes()),
    )
    .expect("a token")
}

// ---------------------------------------------------------------------------------------------
// The HTTP client
// ---------------------------------------------------------------------------------------------

/// One response: the HTTP status and the body parsed as JSON (every API response must be the
/// Kling envelope, so a body that is not JSON fails the test right there).
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub body: Value,
}

impl Reply {
    /// The envelope's `code`.
    pub fn code(&self) -> i64 {
        self.body["code"].as_i64().unwrap_or(-1)
    }

    /// The envelope's `message`.
    pub fn message(&self) -> &str {
        self.body["message"].as_str().unwrap_or("")
    }

    /// Checks the envelope of a success (200, code 0, `SUCCEED`, a request id) and returns `data`.
    #[track_caller]
    pub fn ok(&self) -> Value {
        assert_eq!((self.status, self.code()), (200, 0), "{:#}", self.body);
        assert_eq!(self.message(), "SUCCEED", "{:#}", self.body);
        self.assert_request_id();
        self.body["data"].clone()
    }

    /// Checks an error envelope: this status and code, a message a person can read, a request id.
    #[track_caller]
    pub fn error(&self, status: u16, code: i64) -> &Self {
        assert_eq!(
            (self.status, self.code()),
            (status, code),
            "expected HTTP {status} / code {code}, got {:#}",
            self.body
        );
        self.assert_message();
        self
    }

    /// Checks an error envelope whose code is one of `codes` (for cases SPEC leaves open).
    #[track_caller]
    pub fn error_in(&self, status: u16, codes: &[i64]) -> &Self {
        assert!(
            self.status == status && codes.contains(&self.code()),
            "expected HTTP {status} / one of {codes:?}, got HTTP {} {:#}",
            self.status,
            self.body
        );
        self.assert_message();
        self
    }

    /// Checks that the message mentions `what` (case-insensitive).
    #[track_caller]
    pub fn mentions(&self, what: &str) -> &Self {
        assert!(
            self.message().to_lowercase().contains(&what.to_lowercase()),
            "the message should name {what:?}: {:#}",
            self.body
        );
        self
    }

    #[track_caller]
    fn assert_message(&self) {
        assert!(
            self.message().len() > 3 && self.message() != "SUCCEED",
            "an error needs a message a person can act on: {:#}",
            self.body
        );
        self.assert_request_id();
    }

    #[track_caller]
    fn assert_request_id(&self) {
        assert!(
            self.body["request_id"]
                .as_str()
                .is_some_and(|id| !id.is_empty()),
            "every response carries a request_id: {:#}",
            self.body
        );
    }
}

/// A Kling API client for one server and (optionally) one account.
#[derive(Clone)]
pub struct Api {
    pub base: String,
    pub http: reqwest::Client,
    key: Option<(String, String)>,
}

/// The routes of the two families (SPEC 1).
pub const SIMPLE: &str = "/v1/images/expand";
pub const OFFICIAL: &str = "/v1/images/editing/expand";

impl Api {
    pub fn new(base: &str) -> Api {
        Api {
            base: base.trim_end_matches('/').to_string(),
            http: client(),
            key: None,
        }
    }

    pub fn with_key(mut self, access_key: &str, secret_key: &str) -> Api {
        self.key = Some((access_key.into(), secret_key.into()));
        self
    }

    /// The same client with a new connection per request. For tests of requests refused
    /// before their body is read: whether such a refusal spoils the keep-alive connection is
    /// `errors::an_early_rejection_does_not_break_the_next_request`'s business alone.
    pub fn fresh_connections(mut self) -> Api {
        self.http = reqwest::Client::builder()
            .no_proxy()
            .pool_max_idle_per_host(0)
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap();
        self
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The `Authorization` value for this client's account, a fresh token each time.
    pub fn authorization(&self) -> Option<String> {
        self.key
            .as_ref()
            .map(|(ak, sk)| format!("Bearer {}", jwt(ak, sk)))
    }

    /// Sends any request; `authorization` replaces the account's token (`Some("")` sends an
    /// empty header, `None` the account's own token if any).
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        authorization: Option<&str>,
        content_type: Option<&str>,
        body: Option<Vec<u8>>,
    ) -> Reply {
        let mut request = self.http.request(method.clone(), self.url(path));
        match authorization {
            Some(value) => request = request.header("authorization", value),
            None => {
                if let Some(value) = self.authorization() {
                    request = request.header("authorization", value);
                }
            }
        }
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        if let Some(body) = body {
            request = request.body(body);
        }
        let response = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: no response: {}", chain(&e)));
        let status = response.status().as_u16();
        let text = response.text().await.expect("a readable body");
        let body = serde_json::from_str(&text).unwrap_or_else(|_| {
            panic!(
                "{method} {path}: HTTP {status} with a body that is not the JSON envelope: {text:?}"
            )
        });
        Reply { status, body }
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.send(Method::GET, path, None, None, None).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> Reply {
        self.send(
            Method::POST,
            path,
            None,
            Some("application/json"),
            Some(serde_json::to_vec(body).unwrap()),
        )
        .await
    }

    /// Creates a task through the simple family and returns its id (the create must succeed).
    pub async fn create(&self, body: &Value) -> String {
        let data = self.post(SIMPLE, body).await.ok();
        assert_eq!(data["task_status"], "submitted", "{data:#}");
        task_id(&data)
    }

    /// Creates a task through the official family and returns its id.
    pub async fn create_official(&self, body: &Value) -> String {
        let data = self.post(OFFICIAL, body).await.ok();
        assert_eq!(data["task_status"], "submitted", "{data:#}");
        task_id(&data)
    }

    /// The task object for `id` (a task_id or external_task_id), through the simple family.
    pub async fn task(&self, id: &str) -> Value {
        self.get(&format!("{SIMPLE}/{id}")).await.ok()
    }

    /// Polls `id` until it is `succeed` or `failed`, at most `timeout`; returns the task.
    pub async fn wait(&self, id: &str, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let task = self.task(id).await;
            match task["task_status"].as_str() {
                Some("succeed" | "failed") => return task,
                Some("submitted" | "processing") => {}
                other => panic!("task {id}: unexpected task_status {other:?}: {task:#}"),
            }
            assert!(
                Instant::now() < deadline,
                "task {id} not finished within {timeout:?}: {task:#}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// As [`Api::wait`], and checks that the task succeeded.
    pub async fn wait_succeed(&self, id: &str, timeout: Duration) -> Value {
        let task = self.wait(id, timeout).await;
        assert_eq!(task["task_status"], "succeed", "{task:#}");
        task
    }

    /// Downloads a result image (no credentials: result URLs stand on their own).
    pub async fn download(&self, url: &str) -> (String, Vec<u8>) {
        let response = self
            .http
            .get(url)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {url}: {}", chain(&e)));
        assert_eq!(response.status(), 200, "GET {url}");
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        (content_type, response.bytes().await.unwrap().to_vec())
    }

    /// Downloads and decodes result image `index` of a finished task.
    pub async fn result_image(&self, task: &Value, index: usize) -> DynamicImage {
        let url = result_url(task, index);
        let (_, bytes) = self.download(&url).await;
        decode(&bytes)
    }
}

/// An error and all its sources, on one line (reqwest's own message hides the cause).
pub fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

/// A reqwest client that ignores proxy settings (everything here is loopback).
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

#[track_caller]
pub fn task_id(task: &Value) -> String {
    task["task_id"]
        .as_str()
        .filter(|id| !id.is_empty())
        .unwrap_or_else(|| panic!("a task_id: {task:#}"))
        .to_string()
}

/// `task_result.images[index].url`, checked to be absolute.
#[track_caller]
pub fn result_url(task: &Value, index: usize) -> String {
    let image = &task["task_result"]["images"][index];
    assert_eq!(image["index"], index, "{task:#}");
    let url = image["url"]
        .as_str()
        .unwrap_or_else(|| panic!("images[{index}].url: {task:#}"));
    assert!(
        url.starts_with("http://") || url.starts_with("https://"),
        "result URLs are absolute: {url}"
    );
    url.to_string()
}

// ---------------------------------------------------------------------------------------------
// Images
// ---------------------------------------------------------------------------------------------

/// A photo-like test image: smooth gradients with some texture (as in the CLI tests).
pub fn textured(width: u32, height: u32) -> RgbImage {
    RgbImage::from_fn(width, height, |x, y| {
        let noise = (x.wrapping_mul(2_654_435_761) ^ y.wrapping_mul(40_503)) >> 27;
        Rgb([
            (x * 200 / width + noise) as u8,
            (y * 200 / height + noise) as u8,
            ((x + y) % 64 + noise * 2) as u8,
        ])
    })
}

pub fn encoded(image: &RgbImage, format: ImageFormat) -> Vec<u8> {
    let mut bytes = Cursor::new(Vec::new());
    DynamicImage::ImageRgb8(image.clone())
        .write_to(&mut bytes, format)
        .expect("encodes");
    bytes.into_inner()
}

pub fn png(image: &RgbImage) -> Vec<u8> {
    encoded(image, ImageFormat::Png)
}

pub fn base64(bytes: &[u8]) -> String {
    BASE64.encode(bytes)
}

/// A textured `width × height` PNG as raw base64, and the image itself.
pub fn png_base64(width: u32, height: u32) -> (RgbImage, String) {
    let image = textured(width, height);
    let b64 = base64(&png(&image));
    (image, b64)
}

pub fn decode(bytes: &[u8]) -> DynamicImage {
    image::load_from_memory(bytes).expect("a readable image")
}

/// A PNG whose IHDR declares `width × height` (valid CRC) over a 4×4 image's data.
pub fn png_declaring(width: u32, height: u32) -> Vec<u8> {
    let mut bytes = png(&textured(4, 4));
    assert_eq!(&bytes[12..16], b"IHDR");
    bytes[16..20].copy_from_slice(&width.to_be_bytes());
    bytes[20..24].copy_from_slice(&height.to_be_bytes());
    let crc = crc32fast::hash(&bytes[12..29]);
    bytes[29..33].copy_from_slice(&crc.to_be_bytes());
    bytes
}

/// Checks that `result` holds `original`'s pixels exactly with its top-left corner at `(x, y)`;
/// names the first pixel that differs.
#[track_caller]
pub fn assert_box_exact(result: &RgbImage, original: &RgbImage, x: u32, y: u32) {
    assert!(
        x + original.width() <= result.width() && y + original.height() <= result.height(),
        "the original {}×{} at ({x}, {y}) does not fit in the result {}×{}",
        original.width(),
        original.height(),
        result.width(),
        result.height()
    );
    if let Some((ox, oy, px)) = original
        .enumerate_pixels()
        .find(|(ox, oy, px)| result.get_pixel(x + ox, y + oy) != *px)
    {
        panic!(
            "the original's pixel ({ox}, {oy}) = {px:?} became {:?} at ({}, {}) in the result",
            result.get_pixel(x + ox, y + oy),
            x + ox,
            y + oy
        );
    }
}

// ---------------------------------------------------------------------------------------------
// A local HTTP server: callback receiver and image host
// ---------------------------------------------------------------------------------------------

/// One request the local server received.
#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Received {
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    /// The delivered task object. SPEC 4 says the body is "the task object of section 2"; an
    /// envelope around it (`{"code", "data": task}`) is accepted too.
    pub fn task(&self) -> Value {
        let body: Value = serde_json::from_slice(&self.body).unwrap_or_else(|_| {
            panic!(
                "a callback body that is not JSON: {:?}",
                String::from_utf8_lossy(&self.body)
            )
        });
        if body.get("task_id").is_none() && body["data"].get("task_id").is_some() {
            body["data"].clone()
        } else {
            body
        }
    }

    /// Checks the Standard Webhooks signature with `key` (the HMAC key bytes).
    pub fn verify(&self, key: &[u8]) -> Result<(), String> {
        let id = self.header("webhook-id");
        let timestamp = self.header("webhook-timestamp");
        let signatures = self.header("webhook-signature");
        if id.is_empty() || timestamp.is_empty() || signatures.is_empty() {
            return Err(format!("missing webhook-* headers: {:?}", self.headers));
        }
        let seconds: i64 = timestamp
            .parse()
            .map_err(|_| format!("webhook-timestamp is not Unix seconds: {timestamp:?}"))?;
        if (seconds - now()).abs() > 300 {
            return Err(format!(
                "webhook-timestamp {seconds} is far from now {}",
                now()
            ));
        }
        let expected = signature(key, id, timestamp, &self.body);
        if signatures.split(' ').any(|s| s == expected) {
            Ok(())
        } else {
            Err(format!(
                "webhook-signature {signatures:?} does not match {expected:?}"
            ))
        }
    }
}

/// The Standard Webhooks `v1` signature of a delivery.
fn signature(key: &[u8], id: &str, timestamp: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap();
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    format!("v1,{}", BASE64.encode(mac.finalize().into_bytes()))
}

/// The harness's own check against the example in the Standard Webhooks specification, so that
/// a signature failure in a test points at the server.
#[test]
fn signature_matches_the_standard_webhooks_example() {
    let key = BASE64.decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
    assert_eq!(
        signature(
            &key,
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            "1614265330",
            br#"{"test": 2432232314}"#
        ),
        "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    );
}

#[derive(Default)]
struct LocalState {
    received: Mutex<Vec<Received>>,
    files: Mutex<HashMap<String, (String, Vec<u8>)>>,
    /// How many more POSTs to answer with 503 before answering 200.
    fail_next: AtomicUsize,
}

/// A small HTTP server on loopback: records every POST (answering 200, or 503 while told to
/// fail), and serves files put with [`Local::put`] on GET. It stops with the test's runtime.
#[derive(Clone)]
pub struct Local {
    /// `http://127.0.0.1:PORT`
    pub url: String,
    state: Arc<LocalState>,
}

impl Local {
    /// Starts on a free port.
    pub async fn start() -> Local {
        Local::start_on(0).await
    }

    /// Starts on `port` (one from [`reserve_port`], for a receiver that comes up late).
    pub async fn start_on(port: u16) -> Local {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("bind the local server");
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(LocalState::default());
        let handler_state = state.clone();
        let app = axum::Router::new().fallback(
            move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
                let state = handler_state.clone();
                async move { local_handler(&state, method, uri, headers, body) }
            },
        );
        tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Local {
            url: format!("http://{addr}"),
            state,
        }
    }

    /// Serves `bytes` at `path` with `content_type`; returns the absolute URL.
    pub fn put(&self, path: &str, content_type: &str, bytes: Vec<u8>) -> String {
        self.state
            .files
            .lock()
            .unwrap()
            .insert(path.into(), (content_type.into(), bytes));
        format!("{}{path}", self.url)
    }

    /// Answers the next `count` POSTs with 503.
    pub fn fail_next(&self, count: usize) {
        self.state.fail_next.store(count, Ordering::SeqCst);
    }

    /// Every POST received so far, in order of arrival.
    pub fn received(&self) -> Vec<Received> {
        self.state.received.lock().unwrap().clone()
    }

    /// The callbacks received for `task_id`, in order of arrival.
    pub fn callbacks_for(&self, task_id: &str) -> Vec<Received> {
        self.received()
            .into_iter()
            .filter(|r| r.task()["task_id"] == task_id)
            .collect()
    }

    /// Waits until a callback with `status` for `task_id` has arrived (answered 200), at most
    /// `timeout`; returns all callbacks for that task.
    pub async fn wait_status(
        &self,
        task_id: &str,
        status: &str,
        timeout: Duration,
    ) -> Vec<Received> {
        let deadline = Instant::now() + timeout;
        loop {
            let callbacks = self.callbacks_for(task_id);
            if callbacks.iter().any(|r| r.task()["task_status"] == status) {
                return callbacks;
            }
            assert!(
                Instant::now() < deadline,
                "no {status:?} callback for {task_id} within {timeout:?}; got {:?}",
                callbacks
                    .iter()
                    .map(|r| r.task()["task_status"].clone())
                    .collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn local_handler(
    state: &LocalState,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> axum::response::Response {
    let path = uri.path().to_string();
    if method == Method::POST {
        let failing = state
            .fail_next
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if failing {
            return StatusCode::SERVICE_UNAVAILABLE.into_response();
        }
        state.received.lock().unwrap().push(Received {
            path,
            headers,
            body,
        });
        return StatusCode::OK.into_response();
    }
    match state.files.lock().unwrap().get(&path) {
        Some((content_type, bytes)) => {
            ([("content-type", content_type.clone())], bytes.clone()).into_response()
        }
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

/// The local server itself: files served, POSTs recorded, failures on demand.
#[tokio::test]
async fn local_server_serves_records_and_fails_on_demand() {
    let local = Local::start().await;
    let url = local.put("/a.png", "image/png", vec![1, 2, 3]);
    let http = client();
    let response = http.get(&url).send().await.unwrap();
    assert_eq!(response.headers()["content-type"], "image/png");
    assert_eq!(response.bytes().await.unwrap().as_ref(), [1, 2, 3]);
    local.fail_next(1);
    let post = |body: &'static str| http.post(format!("{}/hook", local.url)).body(body).send();
    assert_eq!(post(r#"{"task_id": "t"}"#).await.unwrap().status(), 503);
    assert_eq!(post(r#"{"task_id": "t"}"#).await.unwrap().status(), 200);
    assert_eq!(local.callbacks_for("t").len(), 1);
    assert_eq!(local.received()[0].path, "/hook");
}
