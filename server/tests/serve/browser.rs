//! The web page at `/`, in a real headless Chromium driven through WebDriver (Debian's
//! `chromium` and `chromium-driver`; `.ci/run` installs them): sign in, upload, per-side
//! expansion by typing, dragging and the keyboard, a finished task's image, the server's own
//! refusal messages before submitting, a wrong secret's 401. Every request the page makes is
//! recorded (Chrome's performance log) and must go to this server's public routes.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::actions::{InputSource, MOUSE_BUTTON_LEFT, MouseActions, PointerAction};
use fantoccini::elements::Element;
use fantoccini::key::Key;
use fantoccini::wd::{Capabilities, WebDriverCompatibleCommand};
use fantoccini::{Client, ClientBuilder, Locator};
use image::ImageFormat;
use outpaint_canvas::{Expansion, Limits, Sides};
use serde_json::{Value, json};

use crate::harness::*;

const KEYS: (&str, &str) = ("ak-web", "sk-web-0123456789");
/// The page's files besides `/` itself.
const ASSETS: [&str; 5] = ["app.js", "geometry.js", "jwt.js", "style.css", "icon.svg"];

// ---------------------------------------------------------------------------------------------
// Chromium through chromedriver
// ---------------------------------------------------------------------------------------------

/// The first of `names` found on PATH.
fn find_program(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|dir| names.iter().map(move |name| dir.join(name)))
        .find(|candidate| candidate.is_file())
}

/// A chromedriver process and one headless Chromium session with a fresh profile.
struct Browser {
    driver: Child,
    client: Client,
    _profile: tempfile::TempDir,
}

impl Browser {
    async fn start() -> Browser {
        let missing = "the browser test needs Chromium and its WebDriver: \
                       `apt-get install chromium chromium-driver` (Debian; .ci/run does it)";
        let chromium = find_program(&["chromium", "chromium-browser", "google-chrome"])
            .unwrap_or_else(|| panic!("no chromium on PATH: {missing}"));
        let chromedriver = find_program(&["chromedriver"])
            .unwrap_or_else(|| panic!("no chromedriver on PATH: {missing}"));
        let port = reserve_port();
        let mut driver = Command::new(&chromedriver)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", chromedriver.display()));
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        while client().get(format!("{url}/status")).send().await.is_err() {
            if Instant::now() > deadline {
                let _ = driver.kill();
                panic!("chromedriver did not answer on {url} within 20 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let profile = tempfile::tempdir().unwrap();
        let capabilities = json!({
            "browserName": "chrome",
            "goog:loggingPrefs": {"performance": "ALL"},
            "goog:chromeOptions": {
                "binary": chromium,
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
                    "--window-size=1280,1000",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            },
        });
        let capabilities: Capabilities = serde_json::from_value(capabilities).unwrap();
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = match ClientBuilder::new(connector)
            .capabilities(capabilities)
            .connect(&url)
            .await
        {
            Ok(client) => client,
            Err(e) => {
                let _ = driver.kill();
                panic!("chromedriver could not start {}: {e}", chromium.display());
            }
        };
        Browser {
            driver,
            client,
            _profile: profile,
        }
    }

    /// Runs `scenario` with the browser, closes the session and chromedriver whatever happens,
    /// then passes on the scenario's panic, if any.
    async fn run<F, Fut>(self, scenario: F)
    where
        F: FnOnce(Client) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let outcome = tokio::spawn(scenario(self.client.clone())).await;
        let _ = self.client.close().await;
        let mut driver = self.driver;
        let _ = driver.kill();
        let _ = driver.wait();
        if let Err(err) = outcome {
            std::panic::resume_unwind(err.into_panic());
        }
    }
}

/// chromedriver's `POST /session/{id}/se/log`: the entries of one log since the last call.
#[derive(Debug)]
struct GetLog(&'static str);

impl WebDriverCompatibleCommand for GetLog {
    fn endpoint(
        &self,
        base: &url::Url,
        session: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base.join(&format!("session/{}/se/log", session.unwrap_or_default()))
    }

    fn method_and_body(&self, _: &url::Url) -> (axum::http::Method, Option<String>) {
        (
            axum::http::Method::POST,
            Some(json!({"type": self.0}).to_string()),
        )
    }
}

/// One request Chrome sent: method, URL, and the URL of the document that sent it.
struct Sent {
    method: String,
    url: String,
    document: String,
}

/// Every request the browser sent so far, from Chrome's performance log.
async fn requests(client: &Client) -> Vec<Sent> {
    let entries = client.issue_cmd(GetLog("performance")).await.unwrap();
    entries
        .as_array()
        .expect("log entries")
        .iter()
        .filter_map(|entry| serde_json::from_str::<Value>(entry["message"].as_str()?).ok())
        .filter(|m| m["message"]["method"] == "Network.requestWillBeSent")
        .map(|m| {
            let params = &m["message"]["params"];
            let text = |v: &Value| v.as_str().unwrap_or("").to_string();
            Sent {
                method: text(&params["request"]["method"]),
                url: text(&params["request"]["url"]),
                document: text(&params["documentURL"]),
            }
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Page helpers
// ---------------------------------------------------------------------------------------------

async fn find(client: &Client, css: &str) -> Element {
    client
        .find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("no element {css}: {e}"))
}

/// Runs `script` (a function body; `arguments` holds `args`) and returns its value.
async fn js(client: &Client, script: &str, args: Vec<Value>) -> Value {
    client
        .execute(script, args)
        .await
        .unwrap_or_else(|e| panic!("script failed: {e}\n{script}"))
}

/// Polls `condition` (a JS expression) until it is truthy; returns its last value.
async fn wait_for(client: &Client, condition: &str, timeout: Duration) -> Value {
    let deadline = Instant::now() + timeout;
    let script = format!("return ({condition});");
    loop {
        let value = js(client, &script, vec![]).await;
        if !(value.is_null() || value == false || value == "") {
            return value;
        }
        if Instant::now() > deadline {
            let page = js(client, "return document.body.innerText;", vec![]).await;
            panic!("`{condition}` still false after {timeout:?}; the page says:\n{page}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn text(client: &Client, css: &str) -> String {
    find(client, css).await.text().await.unwrap()
}

/// Replaces an input's value by typing, as a person would.
async fn type_into(client: &Client, css: &str, value: &str) {
    let input = find(client, css).await;
    input.clear().await.unwrap();
    input.send_keys(value).await.unwrap();
}

async fn value_of(client: &Client, css: &str) -> String {
    find(client, css)
        .await
        .prop("value")
        .await
        .unwrap()
        .unwrap_or_default()
}

async fn sign_in(client: &Client, access: &str, secret: &str) {
    wait_for(
        client,
        "!document.getElementById('sign-in').hidden",
        Duration::from_secs(10),
    )
    .await;
    type_into(client, "#access-key", access).await;
    type_into(client, "#secret-key", secret).await;
    find(client, "#sign-in-form button[type=submit]")
        .await
        .click()
        .await
        .unwrap();
}

fn write_file(dir: &Path, name: &str, bytes: &[u8]) -> String {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path.to_str().unwrap().to_string()
}

// ---------------------------------------------------------------------------------------------
// The tests
// ---------------------------------------------------------------------------------------------

/// The whole page, end to end, in Chromium.
#[tokio::test(flavor = "multi_thread")]
async fn the_page_expands_a_photo_in_a_real_browser() {
    let open = server().start();
    let server = server().key(KEYS.0, KEYS.1).start();
    let browser = Browser::start().await;
    let (url, open_url) = (server.url.clone(), open.url.clone());
    let api = server.api_as(KEYS.0, KEYS.1);
    browser
        .run(|client| async move {
            let files = tempfile::tempdir().unwrap();
            sign_in_and_expand(&client, &url, &api).await;
            direction_and_ratio(&client, &api).await;
            same_rule_and_words_as_the_server(&client, &api).await;
            too_small_is_refused_before_submitting(&client, &api, files.path()).await;
            wrong_secret_shows_the_401(&client, &api).await;
            only_this_servers_public_routes(&client, &url).await;
            phone_width_does_not_scroll_sideways(&client).await;
            no_sign_in_without_accounts(&client, &open_url).await;
        })
        .await;
}

async fn sign_in_and_expand(client: &Client, url: &str, api: &Api) {
    client.goto(&format!("{url}/")).await.unwrap();
    sign_in(client, KEYS.0, KEYS.1).await;
    wait_for(
        client,
        "!document.getElementById('app').hidden",
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(
        text(client, "#account-name").await,
        format!("Signed in as {}", KEYS.0)
    );
    let models = js(
        client,
        "return [...document.querySelectorAll('#model option')].map(o => [o.value, o.selected]);",
        vec![],
    )
    .await;
    assert_eq!(models, json!([["edge", false], ["infill", true]]));

    // The sample photo, 599×400.
    let photo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../assets/coffee.jpg");
    let (width, height) = (599u32, 400u32);
    find(client, "#file")
        .await
        .send_keys(photo.canonicalize().unwrap().to_str().unwrap())
        .await
        .unwrap();
    wait_for(
        client,
        "document.getElementById('preview').naturalWidth",
        Duration::from_secs(10),
    )
    .await;

    // Left by typing; right by dragging its edge, then two steps with the arrow key.
    type_into(client, "#up", "0").await;
    type_into(client, "#down", "0").await;
    type_into(client, "#left", "0.2").await;
    type_into(client, "#right", "0").await;
    let handle = find(client, ".handle.right").await;
    let drag = MouseActions::new("mouse".to_string())
        .then(PointerAction::MoveToElement {
            element: handle.clone(),
            duration: None,
            x: 0.0,
            y: 0.0,
        })
        .then(PointerAction::Down {
            button: MOUSE_BUTTON_LEFT,
        })
        .then(PointerAction::MoveBy {
            duration: Some(Duration::from_millis(150)),
            x: 60.0,
            y: 0.0,
        })
        .then(PointerAction::Up {
            button: MOUSE_BUTTON_LEFT,
        });
    client.perform_actions(drag).await.unwrap();
    let dragged: f64 = value_of(client, "#right").await.parse().unwrap();
    assert!(
        dragged > 0.05 && dragged < 2.0,
        "dragging the right edge by 60 px set {dragged}"
    );
    handle
        .send_keys(&format!("{}{}", Key::Right, Key::Right))
        .await
        .unwrap();
    let right: f64 = value_of(client, "#right").await.parse().unwrap();
    assert!(
        (right - (dragged + 0.02)).abs() < 1e-9,
        "two ArrowRight steps from {dragged} gave {right}"
    );

    // What the server will make of these ratios, by the library it uses.
    let expected = outpaint_canvas::plan(
        width,
        height,
        &Expansion::per_side(0.0, 0.0, 0.2, right).unwrap(),
        &Limits::default(),
    )
    .unwrap();
    let size = text(client, "#size").await;
    assert!(
        size.contains(&format!(
            "canvas {} × {} px",
            expected.width, expected.height
        )),
        "the live size {size:?} should be {}×{}",
        expected.width,
        expected.height
    );
    assert_eq!(text(client, "#create-error").await, "");

    type_into(client, "#prompt", "more of the table").await;
    type_into(client, "#seed", "18446744073709551615").await;
    find(client, "#submit").await.click().await.unwrap();
    wait_for(
        client,
        "document.querySelector('.task[data-status=succeed] img.after')?.naturalWidth",
        Duration::from_secs(40),
    )
    .await;
    let shown = js(
        client,
        "const img = document.querySelector('.task[data-status=succeed] img.after');
         return [img.naturalWidth, img.naturalHeight];",
        vec![],
    )
    .await;
    assert_eq!(shown, json!([expected.width, expected.height]));
    let meta = text(client, ".task .meta").await;
    assert!(
        meta.contains("seed 18446744073709551615") && meta.contains("infill"),
        "{meta}"
    );
    // The task the page created is the account's, as the API sees it.
    let tasks = api
        .get(&format!("{OFFICIAL}?pageNum=1&pageSize=10"))
        .await
        .ok();
    assert_eq!(tasks.as_array().unwrap().len(), 1, "{tasks:#}");
    assert_eq!(tasks[0]["task_status"], "succeed");
    let download = find(client, ".result a.download").await;
    assert_eq!(
        download.attr("href").await.unwrap().as_deref(),
        tasks[0]["task_result"]["images"][0]["url"].as_str()
    );

    // Show the before/after split, then keep a screenshot for the README.
    js(
        client,
        "const r = document.querySelector('.result input[type=range]');
         r.value = 35; r.dispatchEvent(new Event('input')); window.scrollTo(0, 0);",
        vec![],
    )
    .await;
    // As JPEG: the README's copy (assets/web-page.jpg) stays small.
    let png = client.screenshot().await.unwrap();
    let shot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("web-page.jpg");
    let mut jpeg = Vec::new();
    image::load_from_memory(&png)
        .unwrap()
        .to_rgb8()
        .write_with_encoder(image::codecs::jpeg::JpegEncoder::new_with_quality(
            &mut jpeg, 85,
        ))
        .unwrap();
    std::fs::write(&shot, jpeg).unwrap();
    eprintln!("screenshot: {}", shot.display());
}

/// The simple form: a direction and a ratio, sent to the simple route; the list shows the new
/// task first.
async fn direction_and_ratio(client: &Client, api: &Api) {
    find(client, "input[name=mode][value=uniform]")
        .await
        .click()
        .await
        .unwrap();
    type_into(client, "#ratio", "1.5").await;
    let sides = Sides {
        left: true,
        right: true,
        ..Sides::default()
    };
    let expected = outpaint_canvas::plan(
        599,
        400,
        &Expansion::uniform(sides, 1.5).unwrap(),
        &Limits::default(),
    )
    .unwrap();
    let size = text(client, "#size").await;
    let canvas = format!("canvas {} × {} px", expected.width, expected.height);
    assert!(size.contains(&canvas), "{size:?} should say {canvas}");
    find(client, "#submit").await.click().await.unwrap();
    wait_for(
        client,
        "document.querySelectorAll('.task').length === 2
         && document.querySelector('.task').dataset.status === 'succeed'
         && document.querySelector('.task img.after').naturalWidth",
        Duration::from_secs(40),
    )
    .await;
    let first = js(
        client,
        "const task = document.querySelector('.task'), img = task.querySelector('img.after');
         return [task.dataset.taskId, img.naturalWidth, img.naturalHeight];",
        vec![],
    )
    .await;
    let tasks = api
        .get(&format!("{SIMPLE}?pageNum=1&pageSize=10"))
        .await
        .ok();
    assert_eq!(tasks.as_array().unwrap().len(), 2, "{tasks:#}");
    assert_eq!(
        first,
        json!([tasks[0]["task_id"], expected.width, expected.height]),
        "the newest task first, at its canvas size"
    );
}

/// The page's geometry module against `outpaint_canvas::plan` (what the server runs) on a few
/// thousand cases: the same canvas, or the same refusal in the same words.
async fn same_rule_and_words_as_the_server(client: &Client, api: &Api) {
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = move || {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (state >> 33) as f64 / (1u64 << 31) as f64
    };
    let per_side = |up: f64, down: f64, left: f64, right: f64| json!({"form": "per_side", "up": up, "down": down, "left": left, "right": right});
    let uniform = |[top, bottom, left, right]: [bool; 4], ratio: f64| {
        json!({"form": "uniform", "ratio": ratio,
               "sides": {"top": top, "bottom": bottom, "left": left, "right": right}})
    };
    let mut cases = vec![
        // Exact ties of the rounded figures in messages (2.5625, 3.125): Rust rounds to even.
        (820, 320, per_side(0.0, 0.0, 0.1, 0.0)),
        (400, 400, per_side(0.25, 0.0, 0.75, 0.75)),
        (3000, 3000, uniform([true; 4], 1.5)),
        (301, 301, uniform([true; 4], 1.5)),
        (400, 400, uniform([false; 4], 1.5)),
        (400, 400, uniform([false, false, false, true], 1.001)),
        // Ratios whose shortest form in JS has an exponent.
        (400, 400, per_side(0.0, 1e-7, 0.0, 0.0)),
        (400, 400, per_side(0.0, -1e-7, 0.0, 0.0)),
    ];
    let pick = |r: f64, values: &[f64]| values[(r * values.len() as f64) as usize];
    for _ in 0..3000 {
        // Sides around the minimum up to past the pixel limit, aspect ratios around the limit.
        let w = 280 + (next() * 4500.0) as u32;
        let h = ((f64::from(w) * (0.36 + next() * 2.6)) as u32).max(1);
        let expansion = if next() < 0.4 {
            let ratio = if next() < 0.7 {
                1.0 + 2.2 * next()
            } else {
                pick(next(), &[1.0, 1.0001, 1.5, 3.0, 3.0000001, 0.5, 3.5])
            };
            uniform(
                [next() < 0.5, next() < 0.5, next() < 0.5, next() < 0.5],
                ratio,
            )
        } else {
            let mut ratio = || {
                let r = next();
                if r < 0.5 {
                    0.0
                } else if r < 0.55 {
                    pick(next(), &[2.0, 2.0001, -0.01, 0.001])
                } else if r < 0.9 {
                    0.5 * next()
                } else {
                    2.1 * next()
                }
            };
            per_side(ratio(), ratio(), ratio(), ratio())
        };
        cases.push((w, h, expansion));
    }
    let expected: Vec<Value> = cases
        .iter()
        .map(|(w, h, e)| {
            let expansion = if e["form"] == "uniform" {
                let s = &e["sides"];
                let sides = Sides {
                    top: s["top"] == true,
                    bottom: s["bottom"] == true,
                    left: s["left"] == true,
                    right: s["right"] == true,
                };
                Expansion::uniform(sides, e["ratio"].as_f64().unwrap())
            } else {
                let r = |k: &str| e[k].as_f64().unwrap();
                Expansion::per_side(r("up"), r("down"), r("left"), r("right"))
            };
            match expansion.and_then(|x| outpaint_canvas::plan(*w, *h, &x, &Limits::default())) {
                Ok(p) => {
                    let pad = p.padding();
                    json!({"ok": true, "width": p.width, "height": p.height, "padding": {
                        "top": pad.top, "bottom": pad.bottom, "left": pad.left, "right": pad.right}})
                }
                Err(err) => json!({"ok": false, "message": err.to_string()}),
            }
        })
        .collect();
    let input: Vec<Value> = cases.iter().map(|(w, h, e)| json!([w, h, e])).collect();
    let page = client
        .execute_async(
            "const [cases, done] = arguments;
             const config = JSON.parse(document.getElementById('config').textContent);
             import('/assets/geometry.js').then(g =>
               done(cases.map(([w, h, e]) => g.plan(w, h, e, config))));",
            vec![json!(input)],
        )
        .await
        .unwrap();
    let page = page.as_array().unwrap();
    for ((case, want), got) in cases.iter().zip(&expected).zip(page) {
        assert_eq!(got, want, "case {case:?}");
    }
    // The cases reach every rule.
    let planned = expected.iter().filter(|e| e["ok"] == true).count();
    assert!(planned > cases.len() / 5, "only {planned} planned");
    for rule in [
        "must be in",
        "direction is empty",
        "each side must be at least",
        "aspect ratio",
        "at least one side must grow",
        "× the original area",
        "pixels; at most",
    ] {
        assert!(
            expected
                .iter()
                .any(|e| e["message"].as_str().is_some_and(|m| m.contains(rule))),
            "no case refused for {rule:?}"
        );
    }

    // The file checks, against the server itself: a file over the size limit, and a header
    // declaring more pixels than allowed.
    let declaring = png_declaring(5000, 4000);
    let oversized = vec![0u8; 10 * 1024 * 1024 + 1];
    for (bytes, w, h) in [(&declaring, 5000, 4000), (&oversized, 1000, 1000)] {
        let reply = api
            .post(
                OFFICIAL,
                &json!({"image": base64(bytes), "up_expansion_ratio": 0, "down_expansion_ratio": 0,
                        "left_expansion_ratio": 0.2, "right_expansion_ratio": 0}),
            )
            .await;
        reply.error(400, 1201);
        let page = client
            .execute_async(
                "const [size, w, h, done] = arguments;
                 const config = JSON.parse(document.getElementById('config').textContent);
                 import('/assets/geometry.js').then(g => done(g.checkFile(size, w, h, config)));",
                vec![json!(bytes.len()), json!(w), json!(h)],
            )
            .await
            .unwrap();
        assert_eq!(
            page,
            reply.message(),
            "{}×{} in {} bytes",
            w,
            h,
            bytes.len()
        );
    }

    // Both HMAC implementations against RFC 4231 (test cases 1, 2 and 6), and a token the
    // server accepts.
    let hmac = client
        .execute_async(
            "const done = arguments[0];
             const hex = b => [...b].map(x => x.toString(16).padStart(2, '0')).join('');
             const enc = s => new TextEncoder().encode(s);
             import('/assets/jwt.js').then(async j => {
               const cases = [[new Uint8Array(20).fill(0x0b), enc('Hi There')],
                              [enc('Jefe'), enc('what do ya want for nothing?')],
                              [new Uint8Array(131).fill(0xaa),
                               enc('Test Using Larger Than Block-Size Key - Hash Key First')]];
               const out = [];
               for (const [k, d] of cases) out.push([hex(await j.webCryptoHmac(k, d)), hex(j.plainHmac(k, d))]);
               done(out);
             });",
            vec![],
        )
        .await
        .unwrap();
    let rfc4231 = [
        "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7",
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
        "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54",
    ];
    for (pair, want) in hmac.as_array().unwrap().iter().zip(rfc4231) {
        assert_eq!(pair[0], want, "RFC 4231");
        assert_eq!(pair[0], pair[1], "WebCrypto and the plain HMAC differ");
    }
}

async fn too_small_is_refused_before_submitting(client: &Client, api: &Api, files: &Path) {
    let small = encoded(&textured(200, 250), ImageFormat::Png);
    let path = write_file(files, "small.png", &small);
    find(client, "#file").await.send_keys(&path).await.unwrap();
    wait_for(
        client,
        "document.getElementById('preview').naturalWidth === 200",
        Duration::from_secs(10),
    )
    .await;
    find(client, "#submit").await.click().await.unwrap();
    let shown = text(client, "#create-error").await;
    let reply = api
        .post(
            SIMPLE,
            &json!({"image": base64(&small), "direction": "left,right", "expansion_ratio": 1.5}),
        )
        .await;
    reply.error(400, 1201).mentions("300 px");
    assert_eq!(shown, reply.message());
    // Nothing was created: still the two tasks.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let tasks = api
        .get(&format!("{OFFICIAL}?pageNum=1&pageSize=10"))
        .await
        .ok();
    assert_eq!(tasks.as_array().unwrap().len(), 2, "{tasks:#}");
}

async fn wrong_secret_shows_the_401(client: &Client, api: &Api) {
    find(client, "#sign-out").await.click().await.unwrap();
    sign_in(client, KEYS.0, "not-the-secret").await;
    let shown = wait_for(
        client,
        "document.getElementById('sign-in-error').textContent",
        Duration::from_secs(10),
    )
    .await;
    let wrong = Api::new(&api.base).with_key(KEYS.0, "not-the-secret");
    let reply = wrong.get(&format!("{OFFICIAL}?pageNum=1&pageSize=1")).await;
    reply.error(401, 1000);
    assert_eq!(shown, reply.message());
    assert!(
        js(
            client,
            "return document.getElementById('app').hidden;",
            vec![]
        )
        .await
            == true,
        "the tasks must not show after a failed sign-in"
    );
}

async fn only_this_servers_public_routes(client: &Client, url: &str) {
    let mut seen = BTreeSet::new();
    for Sent {
        method,
        url: request_url,
        document,
    } in requests(client).await
    {
        // The browser's own pages (the blank tab it starts with) are not the page's doing.
        if !document.starts_with(url) {
            assert!(
                document.starts_with("chrome") || document.starts_with("about:"),
                "a request from an unknown document {document}: {method} {request_url}"
            );
            continue;
        }
        if request_url.starts_with("blob:") || request_url.starts_with("data:") {
            continue;
        }
        let path = request_url
            .strip_prefix(url)
            .unwrap_or_else(|| panic!("the page fetched another origin: {method} {request_url}"));
        let path = path.split('?').next().unwrap();
        let allowed = path == "/"
            || ASSETS.iter().any(|a| path == format!("/assets/{a}"))
            || [OFFICIAL, SIMPLE].contains(&path)
            || path.starts_with("/results/");
        assert!(
            allowed,
            "the page used a route outside the API: {method} {request_url}"
        );
        seen.insert(format!(
            "{method} {}",
            if path.starts_with("/results/") {
                "/results/"
            } else {
                path
            }
        ));
    }
    for expected in [
        "GET /",
        "GET /assets/app.js",
        "POST /v1/images/editing/expand",
        "POST /v1/images/expand",
        "GET /v1/images/editing/expand",
        "GET /results/",
    ] {
        assert!(seen.contains(expected), "no {expected} recorded: {seen:?}");
    }
}

async fn phone_width_does_not_scroll_sideways(client: &Client) {
    client.set_window_size(390, 844).await.unwrap();
    find(client, "#secret-key").await.clear().await.unwrap();
    sign_in(client, KEYS.0, KEYS.1).await;
    wait_for(
        client,
        "!document.getElementById('app').hidden",
        Duration::from_secs(10),
    )
    .await;
    let widths = js(
        client,
        "return [document.documentElement.scrollWidth, window.innerWidth];",
        vec![],
    )
    .await;
    assert!(
        widths[0].as_u64() <= widths[1].as_u64(),
        "the page is wider than a phone's screen: {widths}"
    );
}

async fn no_sign_in_without_accounts(client: &Client, url: &str) {
    client.goto(&format!("{url}/")).await.unwrap();
    wait_for(
        client,
        "!document.getElementById('app').hidden",
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(
        js(
            client,
            "return document.getElementById('sign-in').hidden;",
            vec![]
        )
        .await,
        true
    );
    assert_eq!(
        text(client, "#account-name").await,
        "Authentication is off on this server"
    );
}

/// `/` and its assets: types, validators, the CSP, and no route besides them.
#[tokio::test]
async fn the_page_is_served_with_types_validators_and_a_strict_policy() {
    let server = server().start();
    let http = client();
    let index = http.get(format!("{}/", server.url)).send().await.unwrap();
    assert_eq!(index.status(), 200);
    assert_eq!(index.headers()["content-type"], "text/html; charset=utf-8");
    let csp = index.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    for directive in [
        "default-src 'none'",
        "script-src 'self'",
        "connect-src 'self'",
    ] {
        assert!(csp.contains(directive), "{csp}");
    }
    assert!(!csp.contains("unsafe") && !csp.contains('*'), "{csp}");
    let etag = index.headers()["etag"].clone();
    let body = index.text().await.unwrap();
    assert!(
        body.contains("\"min_side\":300"),
        "the page carries the limits"
    );
    let again = http
        .get(format!("{}/", server.url))
        .header("if-none-match", etag)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 304);
    for (asset, content_type) in [
        ("app.js", "text/javascript; charset=utf-8"),
        ("style.css", "text/css; charset=utf-8"),
        ("icon.svg", "image/svg+xml"),
    ] {
        let response = http
            .get(format!("{}/assets/{asset}", server.url))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{asset}");
        assert_eq!(response.headers()["content-type"], content_type, "{asset}");
        assert_eq!(response.headers()["cache-control"], "no-cache", "{asset}");
        assert_eq!(response.headers()["x-content-type-options"], "nosniff");
    }
    server.api().get("/assets/nope.js").await.error(404, 1203);
    server.api().get("/assets").await.error(404, 1203);
}
