//! The built-in web page at `/`: try expansions and watch the account's tasks in a browser.
//!
//! The page is plain HTML, CSS and JavaScript under `web/`, embedded at build time (no CDN, no
//! Node step). It talks to the public Kling routes like any client, signing its own JWTs; the
//! only routes added here are `/` and `/assets/{file}`. `/` carries a JSON block with what the
//! page needs to refuse, before submitting, what the server would refuse: the operator's
//! limits, the installed models, and the server's own error messages as templates (rendered
//! from the very error types the API answers with, so the texts cannot drift apart).

use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use outpaint_canvas::CanvasError;
use outpaint_canvas::geometry::{PER_SIDE_RATIO_RANGE, UNIFORM_RATIO_RANGE};
use outpaint_engine::{Engine, EngineError, MAX_PROMPT_CHARS, MAX_VARIATIONS};
use serde_json::json;
use sha2::{Digest, Sha256};

use super::error::ApiError;

/// The page's files: name under `/assets/`, content type, content.
const ASSETS: &[(&str, &str, &str)] = &[
    ("app.js", JAVASCRIPT, include_str!("web/app.js")),
    ("geometry.js", JAVASCRIPT, include_str!("web/geometry.js")),
    ("jwt.js", JAVASCRIPT, include_str!("web/jwt.js")),
    (
        "style.css",
        "text/css; charset=utf-8",
        include_str!("web/style.css"),
    ),
    ("icon.svg", "image/svg+xml", include_str!("web/icon.svg")),
];
const JAVASCRIPT: &str = "text/javascript; charset=utf-8";
const INDEX: &str = include_str!("web/index.html");
/// Replaced in `index.html` by the page's configuration (JSON).
const CONFIG_MARK: &str = "{{config}}";

/// Nothing from another origin: scripts, styles and API calls from this server only; images
/// also from `blob:` (the photo being prepared) and the origin of result URLs.
fn content_security_policy(public_origin: Option<&str>) -> String {
    let images = public_origin.map_or(String::new(), |origin| format!(" {origin}"));
    format!(
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:{images}; \
         connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )
}

/// One file as served: body, content type and strong ETag.
struct Asset {
    body: Bytes,
    content_type: &'static str,
    etag: HeaderValue,
}

impl Asset {
    fn new(body: Bytes, content_type: &'static str) -> Asset {
        let digest = Sha256::digest(&body);
        let hex: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
        let etag = HeaderValue::from_str(&format!("\"{hex}\"")).expect("hex is a valid header");
        Asset {
            body,
            content_type,
            etag,
        }
    }

    /// The file, or 304 when the client's copy is current. Revalidated on every use
    /// (`no-cache`), so an upgraded server is never shown with an old script.
    fn respond(&self, request: &HeaderMap, csp: &HeaderValue) -> Response {
        let fresh = request
            .get(header::IF_NONE_MATCH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|tags| {
                tags.split(',').map(str::trim).any(|tag| {
                    tag == "*" || tag.trim_start_matches("W/").as_bytes() == self.etag.as_bytes()
                })
            });
        let headers = [
            (header::ETAG, self.etag.clone()),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (header::CONTENT_SECURITY_POLICY, csp.clone()),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
            (
                header::REFERRER_POLICY,
                HeaderValue::from_static("no-referrer"),
            ),
        ];
        if fresh {
            return (StatusCode::NOT_MODIFIED, headers).into_response();
        }
        (
            headers,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static(self.content_type),
            )],
            Body::from(self.body.clone()),
        )
            .into_response()
    }
}

/// The page's routes: `/` and `/assets/{file}`. `public_url` is the base of result URLs.
pub fn routes<S: Clone + Send + Sync + 'static>(engine: &Engine, public_url: &str) -> Router<S> {
    let index = Arc::new(Asset::new(
        render_index(engine).into(),
        "text/html; charset=utf-8",
    ));
    let assets: Arc<Vec<(&str, Asset)>> = Arc::new(
        ASSETS
            .iter()
            .map(|&(name, content_type, body)| {
                (
                    name,
                    Asset::new(Bytes::from_static(body.as_bytes()), content_type),
                )
            })
            .collect(),
    );
    let public_origin = url::Url::parse(public_url)
        .ok()
        .map(|url| url.origin().ascii_serialization())
        .filter(|origin| origin != "null");
    // An origin's serialization is ASCII (hosts in punycode), so the policy is a valid value.
    let csp = HeaderValue::from_str(&content_security_policy(public_origin.as_deref()))
        .expect("an ASCII policy");
    let index_csp = csp.clone();
    Router::new()
        .route(
            "/",
            get(move |request: HeaderMap| async move { index.respond(&request, &index_csp) }),
        )
        .route(
            "/assets/{file}",
            get(
                move |Path(file): Path<String>, request: HeaderMap| async move {
                    match assets.iter().find(|(name, _)| *name == file) {
                        Some((_, asset)) => asset.respond(&request, &csp),
                        None => ApiError::NotFound(format!("no asset {file}")).into_response(),
                    }
                },
            ),
        )
}

/// `index.html` with the page's configuration in place of [`CONFIG_MARK`].
fn render_index(engine: &Engine) -> String {
    let config = json!({
        "limits": engine.limits(),
        "ranges": {"uniform": UNIFORM_RATIO_RANGE, "per_side": PER_SIDE_RATIO_RANGE},
        "max_prompt_chars": MAX_PROMPT_CHARS,
        "max_variations": MAX_VARIATIONS,
        "models": engine.backend_names().collect::<Vec<_>>(),
        "default_model": engine.default_backend(),
        "messages": message_templates(),
    });
    // Inside <script>, "</script>" or "<!--" in a string would end or confuse the block.
    let config = config.to_string().replace('<', "\\u003c");
    INDEX.replacen(CONFIG_MARK, &config, 1)
}

/// Stand-in values that mark where each field goes in a rendered message. Each is distinct
/// and none is a prefix of another, so they can be found again in the text.
const MARKS: [u32; 4] = [9_000_001, 9_000_002, 9_000_003, 9_000_004];

/// The server's messages for what the page checks, as templates with `{name}` and
/// `{name:.N}` (N decimals) placeholders, the page filling in the values as Rust formats them.
fn message_templates() -> serde_json::Value {
    let [a, b, c, d] = MARKS;
    let (fa, fc, fd) = (f64::from(a), f64::from(c), f64::from(d));
    let template = |error: &dyn std::fmt::Display, names: &[&str]| {
        let mut text = error.to_string();
        for (name, mark) in names.iter().zip(MARKS) {
            text = placeholder(&text, &mark.to_string(), name);
        }
        text
    };
    json!({
        "empty_direction": template(&CanvasError::EmptyDirection, &[]),
        "ratio_out_of_range": template(
            &CanvasError::RatioOutOfRange { field: "{field}", value: fa, range: "{range}" },
            &["value"],
        ),
        "no_growth": template(
            &CanvasError::NoGrowth { width: a, height: b },
            &["width", "height"],
        ),
        "image_too_small": template(
            &CanvasError::ImageTooSmall { width: a, height: b, min: c },
            &["width", "height", "min"],
        ),
        "aspect_ratio": template(
            &CanvasError::AspectRatio { width: a, height: b, ratio: fc, max: fd },
            &["width", "height", "ratio", "max"],
        ),
        "canvas_area_ratio": template(
            &CanvasError::CanvasAreaRatio { width: a, height: b, ratio: fc, max: fd },
            &["width", "height", "ratio", "max"],
        ),
        "canvas_too_large": template(
            &CanvasError::CanvasTooLarge {
                width: a,
                height: b,
                pixels: u64::from(c),
                max_pixels: u64::from(d),
            },
            &["width", "height", "pixels", "max_pixels"],
        ),
        "file_too_large": template(
            &CanvasError::FileTooLarge { bytes: u64::from(a), max: u64::from(b), max_mib: fc },
            &["bytes", "max", "max_mib"],
        ),
        "image_too_large": template(
            &EngineError::ImageTooLarge { width: a, height: b, megapixels: fc, max_megapixels: fd },
            &["width", "height", "megapixels", "max_megapixels"],
        ),
    })
}

/// Replaces each `mark` (and the decimals a precision printed after it, if any) in `text` by
/// `{name}` or `{name:.N}`.
fn placeholder(text: &str, mark: &str, name: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find(mark) {
        out.push_str(&rest[..start]);
        rest = &rest[start + mark.len()..];
        let decimals = rest
            .strip_prefix('.')
            .map_or(0, |r| r.bytes().take_while(u8::is_ascii_digit).count());
        if decimals > 0 {
            out.push_str(&format!("{{{name}:.{decimals}}}"));
            rest = &rest[decimals + 1..];
        } else {
            out.push_str(&format!("{{{name}}}"));
        }
    }
    out + rest
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_have_every_placeholder_and_no_mark_left() {
        let templates = message_templates();
        let expect = [
            (
                "ratio_out_of_range",
                "{field} must be in {range}, got {value}",
            ),
            (
                "image_too_small",
                "image is {width}×{height} px; each side must be at least {min} px",
            ),
            (
                "aspect_ratio",
                "image aspect ratio {width}:{height} ({ratio:.3}:1) is outside 1:{max} to {max}:1",
            ),
        ];
        for (key, text) in expect {
            assert_eq!(templates[key], text, "{key}");
        }
        for (key, text) in templates.as_object().unwrap() {
            let text = text.as_str().unwrap();
            assert!(
                !MARKS.iter().any(|m| text.contains(&m.to_string()[..4])),
                "{key}: {text}"
            );
        }
        assert!(
            templates["canvas_area_ratio"]
                .as_str()
                .unwrap()
                .contains("{ratio:.2}× the original area; at most {max}×")
        );
        assert!(
            templates["file_too_large"]
                .as_str()
                .unwrap()
                .contains("({max_mib:.1} MiB)")
        );
    }

    #[test]
    fn the_config_block_cannot_end_its_script_element() {
        let page = render_index(&Engine::new(outpaint_canvas::Limits::default()));
        assert!(!page.contains(CONFIG_MARK));
        let start = page.find("id=\"config\">").unwrap();
        let block = &page[start..];
        let end = block.find("</script>").unwrap();
        let json: serde_json::Value =
            serde_json::from_str(&block["id=\"config\">".len()..end]).unwrap();
        assert_eq!(json["limits"]["min_side"], 300);
        assert_eq!(json["models"], json!(["edge", "infill"]));
        assert_eq!(json["default_model"], "infill");
    }

    #[test]
    fn etags_revalidate() {
        let asset = Asset::new(Bytes::from_static(b"x"), "text/plain");
        let csp = HeaderValue::from_static("default-src 'none'");
        let mut headers = HeaderMap::new();
        assert_eq!(asset.respond(&headers, &csp).status(), StatusCode::OK);
        headers.insert(
            header::IF_NONE_MATCH,
            format!("\"other\", W/{}", asset.etag.to_str().unwrap())
                .parse()
                .unwrap(),
        );
        assert_eq!(
            asset.respond(&headers, &csp).status(),
            StatusCode::NOT_MODIFIED
        );
    }
}
