//! A small SoundCloud API v2 on 127.0.0.1 for the real scdl + yt-dlp (`tests/real_scdl_e2e.rs`,
//! `benches/real_tools.rs`): resolve, track JSON with transcodings, stream URLs, HLS playlists
//! of MP3 segments and progressive files. `tests/fixtures/real_scdl/sitecustomize.py` points the
//! tools at it (see [`SoundCloudApi::scdl_env`]); it records every request it gets.
//!
//! What a track does is chosen by the last path segment of its SoundCloud URL, with the stub's
//! prefixes (`tests/stubs/scdl`), so one request body means the same to both:
//!
//! | slug | what the API does |
//! |---|---|
//! | `ok-progressive-*` | one progressive MP3 |
//! | `ok-*` (and anything unmatched) | HLS MP3 (3+ segments) and HLS AAC (whose stream is a 404: never chosen) |
//! | `m4a-*` | one progressive AAC in MP4 (`.m4a`: our pipeline transcodes it) |
//! | `notfound-*` | resolve answers 404 |
//! | `geo-*` | `policy: BLOCK`, no transcodings |
//! | `preview-*` | Go+: only a 30-second `snipped` HLS MP3 (`/preview/`) |
//! | `ratelimit-resolve-*` | resolve answers 429 |
//! | `ratelimit-segment-*` | HLS MP3 whose second segment answers 429 |
//! | `ratelimit-*` | the stream URL (`/media/…`) answers 429 |
//! | `broken-*` | HLS MP3 whose second segment answers 404 |
//!
//! Sets (`/{user}/sets/{name}`, or `/{user}/sets/{name}/{token}` when secret, resolved like
//! tracks), by the name's prefix:
//!
//! | name | what the API does |
//! |---|---|
//! | `notfound-*`, `private-*` | resolve answers 404 |
//! | `empty-*` | a playlist without tracks |
//! | `n{N}-*` (else 12 tracks) | a playlist of N tracks `ok-{name}-{k:02}`, k = 1..N: the first 5 whole, the rest `{"id", "kind"}` only, as SoundCloud sends long sets |
//!
//! `/tracks/{id}` answers a set track's JSON (yt-dlp reads an id-only entry there) and
//! `/tracks?ids=a,b` a list of them (the batch endpoint, for secret sets).
//!
//! Short links (`/on/{code}`, for `SOUNDCLOUD_SHORT_LINK_BASE`) answer 302 with the sharing
//! app's query: `t-{slug}` to the track `{slug}`, `s-{name}` to the set `{name}`, `hop-{code}`
//! to the short link `{code}` (a relative `Location`), `away-{slug}` to a host we do not fetch;
//! any other code is a 404.
//!
//! A slug containing `hostile` gets a hostile SoundCloud title (path separators, control
//! characters, 400+ characters). `/tracks/1032303631` (scdl's client-id check) answers 404,
//! which the `soundcloud` client takes as "the id is valid".

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{header, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde_json::{json, Value};

struct Inner {
    base: String,
    mp3: Vec<u8>,
    m4a: Vec<u8>,
    segments: usize,
    received: Mutex<Vec<String>>,
    /// The slugs of set tracks served so far, by id (for `/tracks/{id}` and `/tracks?ids=`).
    ids: Mutex<HashMap<u64, String>>,
}

pub struct SoundCloudApi {
    addr: SocketAddr,
    inner: Arc<Inner>,
    task: tokio::task::JoinHandle<()>,
}

impl SoundCloudApi {
    /// Serves `mp3` (split into `segments` HLS segments, or whole) and `m4a` (progressive).
    pub async fn start(mp3: Vec<u8>, m4a: Vec<u8>, segments: usize) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the fake SoundCloud API");
        let addr = listener.local_addr().expect("its address");
        let inner = Arc::new(Inner {
            base: format!("http://{addr}"),
            mp3,
            m4a,
            segments: segments.max(3),
            received: Mutex::new(Vec::new()),
            ids: Mutex::new(HashMap::new()),
        });
        let app = Router::new().fallback(answer).with_state(inner.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { addr, inner, task }
    }

    /// `http://127.0.0.1:PORT`
    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every request so far, as `GET /path?query`, in order.
    pub fn received(&self) -> Vec<String> {
        lock(&self.inner.received).clone()
    }

    /// `SOUNDCLOUD_SHORT_LINK_BASE` for this fake's short links.
    pub fn short_link_base(&self) -> String {
        format!("{}/on", self.base())
    }

    /// The environment that makes the real scdl (a child of our process, which passes its
    /// environment on minus the credentials) use this API and nothing else: the
    /// `sitecustomize.py` hook on `PYTHONPATH`, its base URL, a file for the pids of the Python
    /// processes, and proxies on a closed port for anything not loopback (libcurl and urllib
    /// both honour them); and where our own expansion of short links asks (the fake's).
    pub fn scdl_env(&self, pids: &Path) -> Vec<(String, String)> {
        let dead = "http://127.0.0.1:9".to_owned();
        vec![
            ("PYTHONPATH".into(), hook_dir().to_str().unwrap().to_owned()),
            ("XOMCLOUD_FAKE_SOUNDCLOUD".into(), self.base()),
            ("SOUNDCLOUD_SHORT_LINK_BASE".into(), self.short_link_base()),
            (
                "XOMCLOUD_FAKE_SOUNDCLOUD_PIDS".into(),
                pids.to_str().expect("a UTF-8 path").to_owned(),
            ),
            // No __pycache__ next to the checked-in hook.
            ("PYTHONDONTWRITEBYTECODE".into(), "1".into()),
            ("http_proxy".into(), dead.clone()),
            ("https_proxy".into(), dead.clone()),
            ("HTTPS_PROXY".into(), dead.clone()),
            ("all_proxy".into(), dead),
            ("no_proxy".into(), "127.0.0.1,localhost".into()),
            ("NO_PROXY".into(), "127.0.0.1,localhost".into()),
        ]
    }
}

impl Drop for SoundCloudApi {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `tests/fixtures/real_scdl` (holds `sitecustomize.py`).
pub fn hook_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/real_scdl");
    assert!(
        dir.join("sitecustomize.py").is_file(),
        "{} has no sitecustomize.py",
        dir.display()
    );
    dir
}

/// The title SoundCloud gives a `hostile` slug.
pub fn hostile_title() -> String {
    format!("../..\\evil/\u{1}\u{1f}\u{7f}\n:*?<>|\"{}", "x".repeat(400))
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// A stable numeric id for a slug.
fn track_id(slug: &str) -> u64 {
    slug.bytes()
        .fold(5381u64, |h, b| (h * 33 + u64::from(b)) % 1_000_000_000)
        + 1_000_000_000
}

fn query_param(uri: &Uri, name: &str) -> Option<String> {
    url::form_urlencoded::parse(uri.query()?.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

fn reply(status: StatusCode, content_type: &str, body: impl Into<axum::body::Body>) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, content_type.to_owned())],
        body.into(),
    )
        .into_response()
}

fn json_reply(status: StatusCode, body: &Value) -> Response {
    reply(status, "application/json", body.to_string())
}

fn not_found() -> Response {
    json_reply(StatusCode::NOT_FOUND, &json!({"error": "not found"}))
}

/// A transcoding of the track JSON; its `url` is this API's stream endpoint.
fn transcoding(
    base: &str,
    slug: &str,
    kind: &str,
    preset: &str,
    protocol: &str,
    mime: &str,
) -> Value {
    let id = track_id(slug);
    json!({
        "url": format!("{base}/media/soundcloud:tracks:{id}/{kind}/{slug}"),
        "preset": preset,
        "duration": 1000,
        "snipped": kind == "preview",
        "quality": "sq",
        "format": {"protocol": protocol, "mime_type": mime},
    })
}

fn track_json(base: &str, slug: &str) -> Value {
    let id = track_id(slug);
    let mpeg = "audio/mpeg";
    let (policy, transcodings) = if slug.starts_with("ok-progressive-") {
        (
            "ALLOW",
            vec![transcoding(
                base,
                slug,
                "progressive",
                "mp3_0_0",
                "progressive",
                mpeg,
            )],
        )
    } else if slug.starts_with("m4a-") {
        let aac = "audio/mp4; codecs=\"mp4a.40.2\"";
        (
            "ALLOW",
            vec![transcoding(
                base,
                slug,
                "progressive",
                "aac_160k",
                "progressive",
                aac,
            )],
        )
    } else if slug.starts_with("geo-") {
        ("BLOCK", vec![])
    } else if slug.starts_with("preview-") {
        (
            "SNIP",
            vec![transcoding(base, slug, "preview", "mp3_1_0", "hls", mpeg)],
        )
    } else {
        let aac = "audio/mp4; codecs=\"mp4a.40.2\"";
        (
            "ALLOW",
            vec![
                transcoding(base, slug, "hls-aac", "aac_160k", "hls", aac),
                transcoding(base, slug, "hls", "mp3_1_0", "hls", mpeg),
            ],
        )
    };
    let title = if slug.contains("hostile") {
        hostile_title()
    } else {
        format!("SoundCloud title of {slug}")
    };
    json!({
        "id": id,
        "kind": "track",
        "title": title,
        "duration": 1000,
        "created_at": "2024-01-02T03:04:05Z",
        "permalink_url": format!("https://soundcloud.com/fake-artist/{slug}"),
        "user": {"id": 42, "username": "Fake Artist", "permalink_url": "https://soundcloud.com/fake-artist"},
        "policy": policy,
        "downloadable": false,
        "media": {"transcodings": transcodings},
    })
}

/// The slugs of set `name`'s tracks, in order (none for `empty-*`).
pub fn set_track_slugs(name: &str) -> Vec<String> {
    if name.starts_with("empty-") {
        return Vec::new();
    }
    let n = name
        .strip_prefix('n')
        .and_then(|rest| rest.split_once('-'))
        .and_then(|(n, _)| n.parse::<usize>().ok())
        .unwrap_or(12);
    (1..=n).map(|k| format!("ok-{name}-{k:02}")).collect()
}

/// What `/resolve` answers for set `name`; registers its tracks' ids.
fn set_json(api: &Inner, name: &str) -> Value {
    let tracks: Vec<Value> = set_track_slugs(name)
        .iter()
        .enumerate()
        .map(|(k, slug)| {
            lock(&api.ids).insert(track_id(slug), slug.clone());
            if k < 5 {
                track_json(&api.base, slug)
            } else {
                json!({"id": track_id(slug), "kind": "track", "monetization_model": "NOT_APPLICABLE"})
            }
        })
        .collect();
    json!({
        "id": track_id(name),
        "kind": "playlist",
        "title": format!("Set {name}"),
        "set_type": "",
        "permalink_url": format!("https://soundcloud.com/fake-artist/sets/{name}"),
        "user": {"id": 42, "username": "Fake Artist", "permalink_url": "https://soundcloud.com/fake-artist"},
        "track_count": tracks.len(),
        "tracks": tracks,
    })
}

/// The `i`-th of `n` byte ranges of `len` bytes.
fn segment(len: usize, n: usize, i: usize) -> std::ops::Range<usize> {
    let size = len / n;
    let end = if i + 1 == n { len } else { (i + 1) * size };
    i * size..end
}

/// Where short link `code` leads, as on.soundcloud.com answers (with the sharing app's query).
fn short_link_target(code: &str) -> Option<String> {
    const SHARED: &str = "?ref=clipboard&p=i&c=1&si=5e0c7b&utm_source=clipboard";
    if let Some(slug) = code.strip_prefix("t-") {
        Some(format!("https://soundcloud.com/fake-artist/{slug}{SHARED}"))
    } else if let Some(name) = code.strip_prefix("s-") {
        Some(format!(
            "https://soundcloud.com/fake-artist/sets/{name}{SHARED}"
        ))
    } else if let Some(next) = code.strip_prefix("hop-") {
        Some(format!("/{next}"))
    } else {
        code.strip_prefix("away-")
            .map(|slug| format!("https://soundcloud.example/fake-artist/{slug}"))
    }
}

async fn answer(State(api): State<Arc<Inner>>, uri: Uri) -> Response {
    lock(&api.received).push(format!(
        "GET {}",
        uri.path_and_query().map_or("/", |p| p.as_str())
    ));
    let base = &api.base;
    let path = uri.path();
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match parts.as_slice() {
        ["resolve"] => {
            let Some(url) = query_param(&uri, "url") else {
                return not_found();
            };
            let slug = url.trim_end_matches('/').rsplit('/').next().unwrap_or("");
            // `…/sets/{name}` or, for a secret set, `…/sets/{name}/{token}`.
            if let Some((_, rest)) = url.split_once("/sets/") {
                let name = rest.split(['/', '?']).next().unwrap_or("");
                return if name.starts_with("notfound-") || name.starts_with("private-") {
                    not_found()
                } else {
                    json_reply(StatusCode::OK, &set_json(&api, name))
                };
            }
            if slug.starts_with("notfound-") {
                not_found()
            } else if slug.starts_with("ratelimit-resolve-") {
                json_reply(StatusCode::TOO_MANY_REQUESTS, &json!({}))
            } else {
                json_reply(StatusCode::OK, &track_json(base, slug))
            }
        }
        // The transcoding's stream endpoint: a JSON object with the media URL.
        ["media", _, kind, slug] => {
            let slug = *slug;
            let rate_limited = slug.starts_with("ratelimit-")
                && !slug.starts_with("ratelimit-resolve-")
                && !slug.starts_with("ratelimit-segment-");
            if rate_limited {
                return json_reply(StatusCode::TOO_MANY_REQUESTS, &json!({}));
            }
            let url = match *kind {
                "hls" => format!("{base}/hls/{slug}/playlist.m3u8"),
                // SoundCloud's preview playlists live under /playlist/0/30/ (yt-dlp looks).
                "preview" => format!("{base}/playlist/0/30/{slug}/playlist.m3u8"),
                "progressive" => format!("{base}/file/{slug}"),
                _ => return not_found(),
            };
            json_reply(StatusCode::OK, &json!({ "url": url }))
        }
        ["hls", _, "playlist.m3u8"] | ["playlist", "0", "30", _, "playlist.m3u8"] => {
            let dir = path.trim_end_matches("playlist.m3u8");
            let mut m3u8 = String::from(
                "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-PLAYLIST-TYPE:VOD\n#EXT-X-TARGETDURATION:10\n#EXT-X-MEDIA-SEQUENCE:0\n",
            );
            for i in 0..api.segments {
                m3u8.push_str(&format!("#EXTINF:1.0,\n{base}{dir}{i}.mp3\n"));
            }
            m3u8.push_str("#EXT-X-ENDLIST\n");
            reply(StatusCode::OK, "application/vnd.apple.mpegurl", m3u8)
        }
        ["hls", slug, file] | ["playlist", "0", "30", slug, file] => {
            let Some(i) = file
                .strip_suffix(".mp3")
                .and_then(|n| n.parse::<usize>().ok())
            else {
                return not_found();
            };
            if i >= api.segments {
                return not_found();
            }
            if i == 1 && slug.starts_with("broken-") {
                return reply(StatusCode::NOT_FOUND, "text/plain", "no such segment");
            }
            if i == 1 && slug.starts_with("ratelimit-segment-") {
                return reply(StatusCode::TOO_MANY_REQUESTS, "text/plain", "slow down");
            }
            let range = segment(api.mp3.len(), api.segments, i);
            reply(StatusCode::OK, "audio/mpeg", api.mp3[range].to_vec())
        }
        ["file", slug] => {
            if slug.starts_with("m4a-") {
                reply(StatusCode::OK, "audio/mp4", api.m4a.clone())
            } else {
                reply(StatusCode::OK, "audio/mpeg", api.mp3.clone())
            }
        }
        // on.soundcloud.com's short links (`SOUNDCLOUD_SHORT_LINK_BASE` = `{base}/on`).
        ["on", code] => match short_link_target(code) {
            Some(target) => Response::builder()
                .status(StatusCode::FOUND)
                .header(header::LOCATION, target)
                .body(axum::body::Body::empty())
                .unwrap(),
            None => not_found(),
        },
        // A set's id-only track, read by its id.
        ["tracks", id] => {
            let slug = id
                .parse::<u64>()
                .ok()
                .and_then(|id| lock(&api.ids).get(&id).cloned());
            match slug {
                Some(slug) => json_reply(StatusCode::OK, &track_json(base, &slug)),
                // `/tracks/1032303631` (scdl's client-id check) and anything unknown.
                None => not_found(),
            }
        }
        ["tracks"] => {
            let ids = query_param(&uri, "ids").unwrap_or_default();
            let known = lock(&api.ids).clone();
            let tracks: Vec<Value> = ids
                .split(',')
                .filter_map(|id| id.parse::<u64>().ok())
                .filter_map(|id| known.get(&id))
                .map(|slug| track_json(base, slug))
                .collect();
            json_reply(StatusCode::OK, &Value::Array(tracks))
        }
        _ => not_found(),
    }
}
