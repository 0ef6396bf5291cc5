//! Request parsing and validation: the JSON body the frontend POSTs becomes a list of tracks
//! whose URLs are safe to hand to scdl. Knows no AWS or HTTP types.

use serde_json::{Map, Value};
use url::{Host, Url};
use xomcloud_common::ApiError;

/// Largest accepted request body, after any base64 decoding.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// Longest accepted track id.
const MAX_ID_CHARS: usize = 64;

/// Longest accepted track URL; real SoundCloud links with share parameters stay far below.
const MAX_URL_CHARS: usize = 2048;

/// Longest kept title or artist (longer ones are cut): a job's record stays small.
pub const MAX_TEXT_CHARS: usize = 300;

/// Longest S3 key owner segment.
const MAX_OWNER_CHARS: usize = 30;

/// Hosts scdl may be pointed at; compared exactly, after lowercasing.
const ALLOWED_HOSTS: [&str; 5] = [
    "soundcloud.com",
    "www.soundcloud.com",
    "m.soundcloud.com",
    "on.soundcloud.com",
    "api.soundcloud.com",
];

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Track {
    pub id: String,
    pub url: String,
    pub title: String,
    pub artist: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DownloadRequest {
    pub tracks: Vec<Track>,
    pub username: Option<String>,
}

/// What the body is for: `/download` fetches its tracks as they are; a job resolves what is
/// missing first (its entries may be a bare `url`, and that URL may be a set).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Download,
    Job,
}

/// The body of `POST /download`: every entry has an id (title and artist default), no sets.
/// body = the request body after any base64 decoding.
pub fn parse_request(body: &[u8], max_tracks: usize) -> Result<DownloadRequest, ApiError> {
    parse(body, max_tracks, Mode::Download)
}

/// The body of `POST /jobs`: as `/download`'s, but an entry may be just `{"url": …}` and the URL
/// may be a set. What the entry leaves out stays empty (`id`, `title`, `artist`: see
/// [`Track::needs_resolution`]) and the job's first step fills it in from SoundCloud.
pub fn parse_job_request(body: &[u8], max_tracks: usize) -> Result<DownloadRequest, ApiError> {
    parse(body, max_tracks, Mode::Job)
}

impl Track {
    /// A job resolves this entry before fetching: a set, a short link (it may lead to a set),
    /// or an entry without its id, title or artist.
    pub fn needs_resolution(&self) -> bool {
        self.id.is_empty()
            || self.title.is_empty()
            || self.artist.is_empty()
            || is_set_url(&self.url)
            || crate::shortlink::is_short_link(&self.url)
    }
}

/// A SoundCloud set (playlist or album): `soundcloud.com/{user}/sets/{name}` (also `www.`, `m.`)
/// or `api.soundcloud.com/playlists/{id}`. An `on.soundcloud.com` short link cannot be told
/// apart without asking where it leads (`shortlink`).
pub fn is_set_url(url: &str) -> bool {
    let Ok(parsed) = Url::parse(url) else {
        return false;
    };
    let segments: Vec<&str> = parsed
        .path_segments()
        .map(|s| s.filter(|s| !s.is_empty()).collect())
        .unwrap_or_default();
    match parsed.host_str() {
        Some("soundcloud.com" | "www.soundcloud.com" | "m.soundcloud.com") => {
            matches!(segments.as_slice(), [_, "sets", _, ..])
        }
        Some("api.soundcloud.com") => matches!(segments.as_slice(), ["playlists", ..]),
        _ => false,
    }
}

fn parse(body: &[u8], max_tracks: usize, mode: Mode) -> Result<DownloadRequest, ApiError> {
    if body.len() > MAX_BODY_BYTES {
        return Err(ApiError::validation(format!(
            "request body is too large (at most {MAX_BODY_BYTES} bytes)"
        )));
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::validation("request body is empty"));
    }
    // Line and column only: serde's messages may quote the input.
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::validation(format!(
            "request body is not valid JSON (line {}, column {})",
            e.line(),
            e.column()
        ))
    })?;
    let Value::Object(root) = value else {
        return Err(ApiError::validation("request body must be a JSON object"));
    };

    let entries = match root.get("tracks") {
        None | Some(Value::Null) => return Err(ApiError::validation("tracks is required")),
        Some(Value::Array(entries)) => entries,
        Some(_) => return Err(ApiError::validation("tracks must be a list")),
    };
    if entries.is_empty() {
        return Err(ApiError::validation("tracks must not be empty"));
    }
    if entries.len() > max_tracks {
        return Err(ApiError::validation(format!(
            "at most {max_tracks} tracks per request (got {})",
            entries.len()
        )));
    }

    let tracks = entries
        .iter()
        .enumerate()
        .map(|(i, entry)| match entry {
            Value::Object(fields) => parse_track(i, fields, mode),
            _ => Err(ApiError::validation(format!(
                "tracks[{i}] must be an object"
            ))),
        })
        .collect::<Result<Vec<_>, _>>()?;

    let username = non_blank(root.get("username")).map(str::to_owned);
    Ok(DownloadRequest { tracks, username })
}

fn parse_track(i: usize, fields: &Map<String, Value>, mode: Mode) -> Result<Track, ApiError> {
    let id = match (mode, fields.get("id")) {
        (Mode::Job, None | Some(Value::Null)) => String::new(),
        (_, id) => parse_id(i, id)?,
    };
    let url = parse_url(i, fields, &id)?;
    if mode == Mode::Download && is_set_url(&url) {
        return Err(ApiError::validation(format!(
            "tracks[{i}].url is a SoundCloud set: POST /download takes single tracks; send sets \
             to POST /jobs, which expands them"
        )));
    }
    let cap = |s: &str| s.chars().take(MAX_TEXT_CHARS).collect::<String>();
    // A job leaves them empty, to be filled in from SoundCloud.
    let (default_title, default_artist) = match mode {
        Mode::Download => (format!("Track {}", i + 1), "Unknown Artist"),
        Mode::Job => (String::new(), ""),
    };
    let title = non_blank(fields.get("title"))
        .map(cap)
        .unwrap_or(default_title);
    let artist = cap(non_blank(fields.get("artist"))
        .or_else(|| non_blank(fields.get("metadata_artist")))
        .or_else(|| non_blank(fields.get("user").and_then(|u| u.get("username"))))
        .unwrap_or(default_artist));
    Ok(Track {
        id,
        url,
        title,
        artist,
    })
}

fn parse_id(i: usize, value: Option<&Value>) -> Result<String, ApiError> {
    let id = match value {
        Some(Value::String(s)) => Some(s.trim().to_owned()),
        Some(Value::Number(n)) => whole_number(n),
        None | Some(Value::Null) => {
            return Err(ApiError::validation(format!("tracks[{i}].id is required")))
        }
        Some(_) => None,
    };
    let id = id.ok_or_else(|| {
        ApiError::validation(format!("tracks[{i}].id must be a string or an integer"))
    })?;
    if id.is_empty() {
        return Err(ApiError::validation(format!(
            "tracks[{i}].id must not be empty"
        )));
    }
    if id.chars().count() > MAX_ID_CHARS {
        return Err(ApiError::validation(format!(
            "tracks[{i}].id must be at most {MAX_ID_CHARS} characters"
        )));
    }
    if !id.chars().all(is_id_char) {
        return Err(ApiError::validation(format!(
            "tracks[{i}].id may only contain letters, digits, '_' and '-'"
        )));
    }
    Ok(id)
}

/// An integer, also when written with a zero fraction (`2405.0` is 2405 to JSON Schema and to
/// JavaScript); `None` for any other number.
fn whole_number(n: &serde_json::Number) -> Option<String> {
    if n.is_i64() || n.is_u64() {
        return Some(n.to_string());
    }
    let f = n.as_f64()?;
    let in_range = (i64::MIN as f64..u64::MAX as f64).contains(&f);
    (f.fract() == 0.0 && in_range).then(|| match f < 0.0 {
        true => (f as i64).to_string(),
        false => (f as u64).to_string(),
    })
}

/// `url`, else `permalink_url`, else the API URL built from a numeric id.
fn parse_url(i: usize, fields: &Map<String, Value>, id: &str) -> Result<String, ApiError> {
    for field in ["url", "permalink_url"] {
        let url = match fields.get(field) {
            None | Some(Value::Null) => continue,
            Some(Value::String(s)) => s.trim(),
            Some(_) => {
                return Err(ApiError::validation(format!(
                    "tracks[{i}].{field} must be a string"
                )))
            }
        };
        if url.is_empty() {
            continue;
        }
        return match check_url(url) {
            Ok(()) => Ok(url.to_owned()),
            Err(why) => Err(ApiError::validation(format!(
                "tracks[{i}].{field} must be an https SoundCloud URL ({why})"
            ))),
        };
    }
    if id.is_empty() {
        return Err(ApiError::validation(format!(
            "tracks[{i}].url is required when there is no id"
        )));
    }
    if id.bytes().all(|b| b.is_ascii_digit()) {
        return Ok(format!("https://api.soundcloud.com/tracks/{id}"));
    }
    Err(ApiError::validation(format!(
        "tracks[{i}].url is required when the id is not numeric"
    )))
}

/// Ok when `url` is allowed; Err(reason) otherwise.
pub fn check_url(url: &str) -> Result<(), String> {
    let reject = |why: &str| Err(why.to_owned());
    if url.is_empty() {
        return reject("it is empty");
    }
    if url.chars().count() > MAX_URL_CHARS {
        return Err(format!("it is longer than {MAX_URL_CHARS} characters"));
    }
    // A leading '-' would be read as an option by scdl.
    if url.starts_with('-') {
        return reject("it must not start with '-'");
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return reject("it must not contain whitespace or control characters");
    }
    // The url crate reads '\' as '/' but other parsers (scdl's) may not.
    if url.contains('\\') {
        return reject("it must not contain backslashes");
    }
    let Some(scheme_len) = url.find("://") else {
        return reject("it must start with https://");
    };
    if !url[..scheme_len].eq_ignore_ascii_case("https") {
        return reject("the scheme must be https");
    }
    let parsed = Url::parse(url).map_err(|_| "it is not a valid URL".to_owned())?;
    if parsed.scheme() != "https" {
        return reject("the scheme must be https");
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return reject("it must not contain a user name or password");
    }
    // `port()` hides an explicit default port (:443), so the raw authority is checked below too.
    if parsed.port().is_some() {
        return reject("it must not contain a port");
    }
    let host = match parsed.host() {
        Some(Host::Domain(host)) => host,
        Some(Host::Ipv4(_) | Host::Ipv6(_)) => return reject("the host must not be an IP address"),
        None => return reject("it has no host"),
    };
    if !ALLOWED_HOSTS.contains(&host) {
        return reject("the host must be soundcloud.com or one of its subdomains www, m, on, api");
    }
    // The host as written must be the host as parsed: no %-escapes, IDNA look-alikes, ports.
    let authority = url[scheme_len + 3..]
        .split(['/', '?', '#'])
        .next()
        .unwrap_or_default();
    if !authority.eq_ignore_ascii_case(host) {
        return reject("the host must be written plainly, without a port or user name");
    }
    if parsed.path().is_empty() || parsed.path() == "/" {
        return reject("it must have a path");
    }
    Ok(())
}

/// The S3 key owner: principal when present, else username, else "xomcloud"; reduced to
/// [A-Za-z0-9_-], at most 30 chars; if reduction leaves nothing, fall through to the next
/// candidate.
pub fn key_owner(principal: Option<&str>, username: Option<&str>) -> String {
    [principal, username, Some("xomcloud")]
        .into_iter()
        .flatten()
        .map(|candidate| {
            candidate
                .chars()
                .filter(|&c| is_id_char(c))
                .take(MAX_OWNER_CHARS)
                .collect::<String>()
        })
        .find(|owner| !owner.is_empty())
        .unwrap_or_else(|| "xomcloud".to_owned())
}

fn is_id_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-'
}

/// The trimmed string when `value` is a string with something besides whitespace.
fn non_blank(value: Option<&Value>) -> Option<&str> {
    match value {
        Some(Value::String(s)) if !s.trim().is_empty() => Some(s.trim()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(body: Value, max: usize) -> Result<DownloadRequest, ApiError> {
        parse_request(body.to_string().as_bytes(), max)
    }

    fn parse_one(track: Value) -> Result<Track, ApiError> {
        parse(json!({ "tracks": [track] }), 5).map(|r| r.tracks.into_iter().next().unwrap())
    }

    /// The validation message, asserting the error is a validation error.
    fn message(result: Result<impl std::fmt::Debug, ApiError>) -> String {
        let err = result.expect_err("expected a validation error");
        assert_eq!(err.code(), "VALIDATION_ERROR");
        assert_eq!(err.status(), 400);
        err.public_message().to_owned()
    }

    fn track_json(id: &str) -> Value {
        json!({
            "id": id,
            "url": format!("https://soundcloud.com/artist/track-{id}"),
            "title": "Track Name",
            "artist": "Artist Name",
        })
    }

    #[test]
    fn sets_are_told_apart_from_tracks() {
        for url in [
            "https://soundcloud.com/user/sets/name",
            "https://www.soundcloud.com/user/sets/name/s-token?si=1",
            "https://m.soundcloud.com/user/sets/name/",
            "https://api.soundcloud.com/playlists/123",
        ] {
            assert!(is_set_url(url), "{url}");
        }
        for url in [
            "https://soundcloud.com/user/track",
            "https://soundcloud.com/user/sets",
            "https://soundcloud.com/sets/name",
            "https://api.soundcloud.com/tracks/1",
            "https://on.soundcloud.com/AbC",
            "not a url",
        ] {
            assert!(!is_set_url(url), "{url}");
        }
    }

    #[test]
    fn download_refuses_sets_and_points_to_jobs() {
        let body = json!({"tracks": [track_json("1"), {"id": "2", "url": "https://soundcloud.com/u/sets/s"}]});
        let msg = message(parse(body, 5));
        assert!(
            msg.starts_with("tracks[1].url is a SoundCloud set"),
            "{msg}"
        );
        assert!(msg.contains("POST /jobs"), "{msg}");
    }

    #[test]
    fn a_job_entry_may_be_a_bare_url_or_set() {
        let body = json!({"tracks": [
            {"url": "https://soundcloud.com/u/sets/s"},
            {"url": "https://soundcloud.com/u/t", "title": "T"},
            track_json("3"),
        ]});
        let tracks = parse_job_request(body.to_string().as_bytes(), 5)
            .unwrap()
            .tracks;
        assert_eq!(
            (
                tracks[0].id.as_str(),
                tracks[0].title.as_str(),
                tracks[0].artist.as_str()
            ),
            ("", "", "")
        );
        assert!(tracks[0].needs_resolution());
        assert_eq!(
            (tracks[1].title.as_str(), tracks[1].artist.as_str()),
            ("T", "")
        );
        assert!(tracks[1].needs_resolution());
        assert!(!tracks[2].needs_resolution());
        let msg = message(parse_job_request(br#"{"tracks": [{"title": "x"}]}"#, 5));
        assert_eq!(msg, "tracks[0].url is required when there is no id");
        let msg = message(parse_job_request(
            br#"{"tracks": [{"url": "https://evil.example/a"}]}"#,
            5,
        ));
        assert!(
            msg.starts_with("tracks[0].url must be an https SoundCloud URL"),
            "{msg}"
        );
        // The bare-url shape is the job's only: /download still needs an id.
        let msg = message(parse(
            json!({"tracks": [{"url": "https://soundcloud.com/u/t"}]}),
            5,
        ));
        assert_eq!(msg, "tracks[0].id is required");
    }

    #[test]
    fn long_titles_and_artists_are_cut() {
        let body = json!({"tracks": [{"id": "1", "url": "https://soundcloud.com/a/b",
            "title": "é".repeat(1000), "artist": "x".repeat(301)}]});
        let track = &parse_request(body.to_string().as_bytes(), 5)
            .unwrap()
            .tracks[0];
        assert_eq!(track.title, "é".repeat(MAX_TEXT_CHARS));
        assert_eq!(track.artist.chars().count(), MAX_TEXT_CHARS);
    }

    #[test]
    fn parses_the_frontend_request() {
        let body = br#"{"tracks": [{"id": "123456", "url": "https://soundcloud.com/artist/track", "title": "Track Name", "artist": "Artist Name"}], "username": "someone"}"#;
        let request = parse_request(body, 5).unwrap();
        assert_eq!(
            request,
            DownloadRequest {
                tracks: vec![Track {
                    id: "123456".into(),
                    url: "https://soundcloud.com/artist/track".into(),
                    title: "Track Name".into(),
                    artist: "Artist Name".into(),
                }],
                username: Some("someone".into()),
            }
        );
    }

    #[test]
    fn username_is_optional_and_must_be_a_string() {
        for username in [json!(null), json!(42), json!({"a": 1}), json!("   ")] {
            let request = parse(
                json!({"tracks": [track_json("1")], "username": username}),
                5,
            );
            assert_eq!(request.unwrap().username, None, "{username}");
        }
        let request = parse(json!({"tracks": [track_json("1")]}), 5).unwrap();
        assert_eq!(request.username, None);
        let request = parse(json!({"tracks": [track_json("1")], "username": " bob "}), 5);
        assert_eq!(request.unwrap().username.as_deref(), Some("bob"));
    }

    #[test]
    fn rejects_empty_and_whitespace_bodies() {
        for body in [&b""[..], b"   ", b"\n\t\r "] {
            assert_eq!(message(parse_request(body, 5)), "request body is empty");
        }
    }

    #[test]
    fn body_size_limit_is_inclusive() {
        let head = br#"{"tracks": [{"id": "1", "url": "https://soundcloud.com/a/b"}]}"#;
        let mut body = head.to_vec();
        body.resize(MAX_BODY_BYTES, b' ');
        assert!(parse_request(&body, 5).is_ok());
        body.push(b' ');
        assert!(message(parse_request(&body, 5)).contains("too large"));
    }

    #[test]
    fn rejects_bodies_that_are_not_json_objects() {
        let msg = message(parse_request(b"{not json", 5));
        assert!(msg.starts_with("request body is not valid JSON"), "{msg}");
        assert!(!msg.contains("not json"), "echoes input: {msg}");
        assert!(message(parse_request(b"\xff\xfe", 5)).contains("not valid JSON"));
        for body in ["[]", "\"tracks\"", "42", "null", "true"] {
            assert_eq!(
                message(parse_request(body.as_bytes(), 5)),
                "request body must be a JSON object"
            );
        }
    }

    #[test]
    fn tracks_must_be_a_non_empty_list() {
        assert_eq!(message(parse(json!({}), 5)), "tracks is required");
        assert_eq!(
            message(parse(json!({"tracks": null}), 5)),
            "tracks is required"
        );
        for tracks in [json!("x"), json!({}), json!(3)] {
            assert_eq!(
                message(parse(json!({ "tracks": tracks }), 5)),
                "tracks must be a list"
            );
        }
        assert_eq!(
            message(parse(json!({"tracks": []}), 5)),
            "tracks must not be empty"
        );
    }

    #[test]
    fn entries_must_be_objects() {
        for entry in [
            json!("https://soundcloud.com/a/b"),
            json!(1),
            json!(null),
            json!([]),
        ] {
            let body = json!({ "tracks": [track_json("1"), entry] });
            assert_eq!(message(parse(body, 5)), "tracks[1] must be an object");
        }
    }

    #[test]
    fn track_count_limit_is_inclusive() {
        let tracks: Vec<Value> = (1..=5).map(|i| track_json(&i.to_string())).collect();
        assert_eq!(
            parse(json!({ "tracks": tracks }), 5).unwrap().tracks.len(),
            5
        );
        let tracks: Vec<Value> = (1..=6).map(|i| track_json(&i.to_string())).collect();
        assert_eq!(
            message(parse(json!({ "tracks": tracks }), 5)),
            "at most 5 tracks per request (got 6)"
        );
        let tracks: Vec<Value> = (1..=7).map(|i| track_json(&i.to_string())).collect();
        assert_eq!(
            message(parse(json!({ "tracks": tracks }), 5)),
            "at most 5 tracks per request (got 7)"
        );
    }

    #[test]
    fn ids_may_be_strings_or_integers() {
        let url = "https://soundcloud.com/a/b";
        assert_eq!(
            parse_one(json!({"id": 123456, "url": url})).unwrap().id,
            "123456"
        );
        assert_eq!(
            parse_one(json!({"id": " 42 ", "url": url})).unwrap().id,
            "42"
        );
        assert_eq!(
            parse_one(json!({"id": 2405.0, "url": url})).unwrap().id,
            "2405"
        );
        let big = json!({"id": u64::MAX, "url": url});
        assert_eq!(parse_one(big).unwrap().id, u64::MAX.to_string());
        assert_eq!(
            parse_one(json!({"id": "ab_C-9", "url": url})).unwrap().id,
            "ab_C-9"
        );
    }

    #[test]
    fn rejects_missing_empty_and_odd_ids() {
        let url = "https://soundcloud.com/a/b";
        let cases = [
            (json!({ "url": url }), "tracks[1].id is required"),
            (json!({"id": null, "url": url}), "tracks[1].id is required"),
            (
                json!({"id": "", "url": url}),
                "tracks[1].id must not be empty",
            ),
            (
                json!({"id": "   ", "url": url}),
                "tracks[1].id must not be empty",
            ),
            (
                json!({"id": 1.5, "url": url}),
                "tracks[1].id must be a string or an integer",
            ),
            (
                json!({"id": 1e300, "url": url}),
                "tracks[1].id must be a string or an integer",
            ),
            (
                json!({"id": true, "url": url}),
                "tracks[1].id must be a string or an integer",
            ),
            (
                json!({"id": [1], "url": url}),
                "tracks[1].id must be a string or an integer",
            ),
            (
                json!({"id": "a/b", "url": url}),
                "tracks[1].id may only contain",
            ),
            (
                json!({"id": "1 2", "url": url}),
                "tracks[1].id may only contain",
            ),
            (
                json!({"id": "../x", "url": url}),
                "tracks[1].id may only contain",
            ),
            (
                json!({"id": "x".repeat(65), "url": url}),
                "at most 64 characters",
            ),
        ];
        for (entry, expected) in cases {
            let body = json!({ "tracks": [track_json("0"), entry] });
            let msg = message(parse(body, 5));
            assert!(msg.contains(expected), "{msg} should contain {expected}");
            assert!(msg.starts_with("tracks[1].id"), "{msg}");
        }
        assert!(parse_one(json!({"id": "x".repeat(64), "url": url})).is_ok());
    }

    #[test]
    fn url_falls_back_to_permalink_then_api_url() {
        let permalink = "https://soundcloud.com/p/q";
        for url in [json!(null), json!(""), json!("  ")] {
            let t = parse_one(json!({"id": "7", "url": url, "permalink_url": permalink}));
            assert_eq!(t.unwrap().url, permalink);
        }
        let t = parse_one(json!({"id": "7", "permalink_url": permalink})).unwrap();
        assert_eq!(t.url, permalink);
        let t = parse_one(json!({"id": 7, "permalink_url": ""})).unwrap();
        assert_eq!(t.url, "https://api.soundcloud.com/tracks/7");
        let t = parse_one(json!({"id": "123456"})).unwrap();
        assert_eq!(t.url, "https://api.soundcloud.com/tracks/123456");
    }

    #[test]
    fn api_url_fallback_needs_a_numeric_id() {
        let msg = message(parse_one(json!({"id": "abc"})));
        assert_eq!(msg, "tracks[0].url is required when the id is not numeric");
        assert!(message(parse_one(json!({"id": -5}))).contains("not numeric"));
    }

    #[test]
    fn url_of_the_wrong_type_is_rejected() {
        let msg = message(parse_one(json!({"id": "1", "url": 5})));
        assert_eq!(msg, "tracks[0].url must be a string");
        let msg = message(parse_one(
            json!({"id": "1", "url": ["https://soundcloud.com/a/b"]}),
        ));
        assert_eq!(msg, "tracks[0].url must be a string");
        let msg = message(parse_one(json!({"id": "1", "permalink_url": {}})));
        assert_eq!(msg, "tracks[0].permalink_url must be a string");
    }

    #[test]
    fn a_bad_url_does_not_fall_back() {
        let entry = json!({"id": "1", "url": "http://soundcloud.com/a/b", "permalink_url": "https://soundcloud.com/a/b"});
        let msg = message(parse(
            json!({ "tracks": [track_json("0"), track_json("2"), entry] }),
            5,
        ));
        assert!(
            msg.starts_with("tracks[2].url must be an https SoundCloud URL"),
            "{msg}"
        );
        let msg = message(parse_one(
            json!({"id": "1", "permalink_url": "https://evil.example/a"}),
        ));
        assert!(msg.starts_with("tracks[0].permalink_url must be an https SoundCloud URL"));
    }

    #[test]
    fn url_is_returned_trimmed() {
        let t = parse_one(json!({"id": "1", "url": "  https://soundcloud.com/a/b \n"})).unwrap();
        assert_eq!(t.url, "https://soundcloud.com/a/b");
        let t = parse_one(json!({"id": "1", "url": "HTTPS://SOUNDCLOUD.COM/a/b"})).unwrap();
        assert_eq!(t.url, "HTTPS://SOUNDCLOUD.COM/a/b");
    }

    #[test]
    fn error_messages_do_not_echo_long_input() {
        let long = format!("https://evil.example/{}", "A".repeat(5000));
        let msg = message(parse_one(json!({"id": "1", "url": long})));
        assert!(msg.len() <= 200, "{msg}");
        let msg = message(parse_one(
            json!({"id": "B".repeat(5000), "url": "https://soundcloud.com/a/b"}),
        ));
        assert!(msg.len() <= 200, "{msg}");
        let msg = message(parse_request("{\"x\": \"".repeat(10_000).as_bytes(), 5));
        assert!(msg.len() <= 200, "{msg}");
    }

    #[test]
    fn title_defaults_to_its_position() {
        let url = "https://soundcloud.com/a/b";
        let entries = json!([
            {"id": "1", "url": url, "title": "  Real  "},
            {"id": "2", "url": url},
            {"id": "3", "url": url, "title": null},
            {"id": "4", "url": url, "title": "   "},
            {"id": "5", "url": url, "title": 12},
        ]);
        let titles: Vec<String> = parse(json!({ "tracks": entries }), 5)
            .unwrap()
            .tracks
            .into_iter()
            .map(|t| t.title)
            .collect();
        assert_eq!(titles, ["Real", "Track 2", "Track 3", "Track 4", "Track 5"]);
    }

    #[test]
    fn artist_falls_back_in_order() {
        let url = "https://soundcloud.com/a/b";
        let artist = |extra: Value| {
            let mut entry = json!({"id": "1", "url": url});
            entry
                .as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            parse_one(entry).unwrap().artist
        };
        let all = json!({"artist": " A ", "metadata_artist": "M", "user": {"username": "U"}});
        assert_eq!(artist(all), "A");
        let meta = json!({"artist": "  ", "metadata_artist": " M ", "user": {"username": "U"}});
        assert_eq!(artist(meta), "M");
        let user = json!({"artist": 3, "metadata_artist": null, "user": {"username": " U "}});
        assert_eq!(artist(user), "U");
        assert_eq!(artist(json!({"user": {"username": 5}})), "Unknown Artist");
        assert_eq!(artist(json!({"user": "U"})), "Unknown Artist");
        assert_eq!(artist(json!({})), "Unknown Artist");
    }

    #[test]
    fn accepts_soundcloud_urls() {
        for url in [
            "https://soundcloud.com/artist/track",
            "https://www.soundcloud.com/artist/track",
            "https://m.soundcloud.com/artist/track",
            "https://on.soundcloud.com/AbC123",
            "https://api.soundcloud.com/tracks/123",
            "HTTPS://SOUNDCLOUD.COM/a/b",
            "https://SoundCloud.com/a/b?si=abc&utm_source=clipboard#t=0:10",
        ] {
            assert_eq!(check_url(url), Ok(()), "{url}");
        }
    }

    #[test]
    fn rejects_hostile_urls() {
        for url in [
            "file:///etc/passwd",
            "http://169.254.169.254/",
            "http://169.254.169.254/latest/meta-data/",
            "https://169.254.169.254/x",
            "https://soundcloud.com.evil.example/x",
            "https://evil.example/soundcloud.com/x",
            "https://evilsoundcloud.com/x",
            "https://user@soundcloud.com/x",
            "https://user:pw@soundcloud.com/x",
            "https://:pw@soundcloud.com/x",
            "https://soundcloud.com@evil.example/x",
            "https://soundcloud.com:444/x",
            "https://soundcloud.com:443/x",
            "-o/tmp/x",
            "--exec=sh",
            "http://soundcloud.com/a/b",
            "ftp://soundcloud.com/a/b",
            "https://[::1]/x",
            "https://127.0.0.1/x",
            "https://2130706433/x",
            "https://soundcloud.com./x",
            "https://soundcloud.com/",
            "https://soundcloud.com",
            "https://soundcloud.com?x=1",
            "https://soundcloud%2Ecom/x",
            "https://ｓｏｕｎｄｃｌｏｕｄ.com/x",
            "https:soundcloud.com/x",
            "https:/soundcloud.com/x",
            "https:\\\\soundcloud.com\\x",
            "https://soundcloud.com\\@evil.example/x",
            "https://soundcloud.com/a b",
            " https://soundcloud.com/a/b",
            "https://soundcloud.com/a/b\n",
            "https://soundcloud.com/a\u{0}/b",
            "https://soundcloud.com/a\u{85}b",
            "soundcloud.com/a/b",
            "//soundcloud.com/a/b",
            "",
        ] {
            assert!(check_url(url).is_err(), "accepted {url:?}");
        }
        let long = format!("https://soundcloud.com/{}", "a".repeat(MAX_URL_CHARS));
        assert!(check_url(&long).is_err());
    }

    #[test]
    fn check_url_reasons_do_not_echo_input() {
        let why = check_url("https://soundcloud.com.evil.example/secret").unwrap_err();
        assert!(!why.contains("evil") && !why.contains("secret"), "{why}");
    }

    #[test]
    fn key_owner_prefers_principal_then_username() {
        assert_eq!(key_owner(Some("alice"), Some("bob")), "alice");
        assert_eq!(key_owner(None, Some("bob")), "bob");
        assert_eq!(key_owner(None, None), "xomcloud");
    }

    #[test]
    fn key_owner_reduces_to_safe_characters() {
        assert_eq!(
            key_owner(Some("al/ice@example.com"), None),
            "aliceexamplecom"
        );
        assert_eq!(key_owner(Some("../../etc"), None), "etc");
        assert_eq!(key_owner(Some("a_b-C 9"), None), "a_b-C9");
        assert_eq!(key_owner(Some("jösé"), None), "js");
    }

    #[test]
    fn key_owner_is_cut_to_30_chars() {
        let long = "abcdefghij".repeat(4);
        assert_eq!(key_owner(Some(&long), None), &long[..30]);
        assert_eq!(key_owner(None, Some(&long)), &long[..30]);
        let padded = format!("{}{}", "/".repeat(50), long);
        assert_eq!(key_owner(Some(&padded), None), &long[..30]);
    }

    #[test]
    fn key_owner_falls_through_when_nothing_is_left() {
        assert_eq!(key_owner(Some("@@@"), Some("bob")), "bob");
        assert_eq!(key_owner(Some(""), Some("bob")), "bob");
        assert_eq!(key_owner(Some("日本"), Some("!!")), "xomcloud");
        assert_eq!(key_owner(None, Some("   ")), "xomcloud");
    }
}
