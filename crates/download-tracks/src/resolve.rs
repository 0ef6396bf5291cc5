//! A job's first step: links in, tracks out. A set becomes its tracks in the set's order and an
//! entry without its id, title or artist gets them from SoundCloud's metadata, through the pinned
//! yt-dlp that scdl brings: one process lists every link (`--flat-playlist`: a set's entries,
//! without fetching them), a second one reads the tracks the listing left without title or
//! artist. Every URL that comes out passes [`check_url`], or the job fails saying which.

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;
use tokio::time::Instant;

use crate::scdl::{classify, error_line, last_line, run, scrub, ChildHome, FetchError, Output};
use crate::shortlink::{is_short_link, ShortLinks};
use crate::validate::{check_url, is_set_url, Track, MAX_TEXT_CHARS};

/// yt-dlp's options, before `--` and the URLs: no user config, one JSON document per URL, a set's
/// entries listed rather than extracted, and no stream URLs (`formats=none`: metadata only, one
/// API call per track, and no "no formats" error for it).
pub const YT_DLP_RESOLVE_ARGS: &[&str] = &[
    "--ignore-config",
    "--dump-single-json",
    "--flat-playlist",
    "--ignore-no-formats-error",
    "--extractor-args",
    "soundcloud:formats=none",
];

/// Most JSON a resolution reads (a 200-track set's listing is far below).
const STDOUT_CAP: usize = 64 * 1024 * 1024;

/// What SoundCloud says about a track; any field may be missing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Meta {
    pub id: Option<String>,
    pub url: Option<String>,
    pub title: Option<String>,
    pub artist: Option<String>,
}

/// What one link is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Found {
    Track(Meta),
    /// A set's entries, in its order (a flat listing: often a URL and an id only).
    Set(Vec<Meta>),
}

/// Reads SoundCloud's metadata of several links at once.
#[async_trait]
pub trait Lookup: Send + Sync {
    /// One answer per URL, in order; the outer error is the lookup failing as a whole.
    async fn look_up(&self, urls: &[String]) -> Result<Vec<Result<Found, FetchError>>, FetchError>;
}

/// The tracks of a job once its links are resolved, or why they cannot be, in plain words (the
/// job's `error`). Entries that need nothing pass through, and when none needs anything no
/// process is started.
pub async fn resolve(
    tracks: Vec<Track>,
    max_tracks: usize,
    lookup: &dyn Lookup,
) -> Result<Vec<Track>, String> {
    let keyed = resolve_keyed(tracks, max_tracks, lookup).await?;
    Ok(keyed.into_iter().map(|(track, _)| track).collect())
}

/// [`resolve`], each track beside SoundCloud's own id of it when its metadata was read (the
/// shared track cache's key; a client's `id` never is).
pub async fn resolve_keyed(
    tracks: Vec<Track>,
    max_tracks: usize,
    lookup: &dyn Lookup,
) -> Result<Vec<(Track, Option<String>)>, String> {
    let asked: Vec<usize> = (0..tracks.len())
        .filter(|&i| tracks[i].needs_resolution())
        .collect();
    if asked.is_empty() {
        return Ok(tracks.into_iter().map(|t| (t, None)).collect());
    }
    let urls: Vec<String> = asked.iter().map(|&i| tracks[i].url.clone()).collect();
    let answers = lookup.look_up(&urls).await.map_err(|e| unreadable(&e))?;
    let mut answers: HashMap<usize, Result<Found, FetchError>> =
        asked.iter().copied().zip(answers).collect();

    // Each output track, the entry it came from (for the messages), whether a set listed it
    // (then its title and artist are read next), and SoundCloud's id of it.
    let mut out: Vec<(Track, usize, bool, Option<String>)> = Vec::with_capacity(tracks.len());
    for (i, track) in tracks.into_iter().enumerate() {
        let Some(answer) = answers.remove(&i) else {
            out.push((track, i, false, None));
            continue;
        };
        let found = match answer {
            Ok(found) => found,
            // A set that cannot be read fails the job: its tracks are unknown.
            Err(e) if is_set_url(&track.url) => {
                return Err(format!(
                    "tracks[{i}] ({}): {}",
                    track.url,
                    reason(&e, &track.url)
                ))
            }
            // A track that cannot be read stays as it was given: fetching it fails on its own
            // row with the same reason, and the other tracks go on.
            Err(e) => {
                tracing::info!(entry = i, error = %e, "a track link could not be resolved");
                out.push((track, i, false, None));
                continue;
            }
        };
        match found {
            Found::Set(entries) if entries.is_empty() => {
                return Err(format!(
                    "tracks[{i}] ({}): the set has no tracks",
                    track.url
                ));
            }
            Found::Set(entries) => {
                for (k, entry) in entries.into_iter().enumerate() {
                    let url = listed_url(&entry).map_err(|why| {
                        format!(
                            "tracks[{i}] ({}): its track {} has an address we do not fetch ({why})",
                            track.url,
                            k + 1
                        )
                    })?;
                    let listed = Track {
                        id: String::new(),
                        url,
                        title: String::new(),
                        artist: String::new(),
                    };
                    out.push((merge(&listed, &entry), i, true, soundcloud_id(&entry)));
                }
            }
            Found::Track(meta) => {
                let mut merged = merge(&track, &meta);
                // The client's link is kept (it passed validation; the set case has none), but
                // a short link becomes the address it leads to (checked below, as any).
                merged.url = match &meta.url {
                    Some(url) if is_short_link(&track.url) => url.clone(),
                    _ => track.url,
                };
                out.push((merged, i, false, soundcloud_id(&meta)));
            }
        }
    }
    if out.len() > max_tracks {
        return Err(format!(
            "The job has {} tracks once its sets are expanded; at most {max_tracks} are allowed",
            out.len()
        ));
    }

    // The listing gives a set's tracks without title or artist: one more lookup for those (a
    // track link that failed above is not asked again).
    let missing: Vec<usize> = (0..out.len())
        .filter(|&n| out[n].2 && out[n].0.needs_resolution())
        .collect();
    if !missing.is_empty() {
        let urls: Vec<String> = missing.iter().map(|&n| out[n].0.url.clone()).collect();
        let answers = lookup.look_up(&urls).await.map_err(|e| unreadable(&e))?;
        for (n, answer) in missing.into_iter().zip(answers) {
            let (track, from, _, _) = &out[n];
            let meta = match answer {
                Ok(Found::Track(meta)) => meta,
                Ok(Found::Set(_)) => {
                    return Err(format!(
                        "tracks[{from}]: {} is a set inside a set",
                        track.url
                    ))
                }
                // Fetching it fails on its own row, as for a track link.
                Err(e) => {
                    tracing::info!(entry = from, error = %e, "a set's track could not be resolved");
                    continue;
                }
            };
            let mut merged = merge(track, &meta);
            if let Some(id) = soundcloud_id(&meta) {
                out[n].3 = Some(id);
            }
            if let Some(url) = meta.url.filter(|u| check_url(u).is_ok()) {
                merged.url = url;
            }
            out[n].0 = merged;
        }
    }

    let mut resolved = Vec::with_capacity(out.len());
    for (n, (mut track, from, _, soundcloud)) in out.into_iter().enumerate() {
        if let Err(why) = check_url(&track.url) {
            return Err(format!(
                "tracks[{from}]: SoundCloud gave a track address we do not fetch ({why})"
            ));
        }
        if is_set_url(&track.url) {
            return Err(format!(
                "tracks[{from}]: {} is a set inside a set",
                track.url
            ));
        }
        if track.id.is_empty() {
            track.id = format!("{}", n + 1);
        }
        if track.title.is_empty() {
            track.title = format!("Track {}", n + 1);
        }
        if track.artist.is_empty() {
            track.artist = "Unknown Artist".into();
        }
        resolved.push((track, soundcloud));
    }
    Ok(resolved)
}

/// The whole lookup failed (yt-dlp missing, timed out, SoundCloud unreachable…).
fn unreadable(e: &FetchError) -> String {
    format!("Could not read the job's links from SoundCloud: {e}")
}

/// Why one link could not be read; "not found" names what was not found.
fn reason(e: &FetchError, url: &str) -> String {
    match (e, is_set_url(url)) {
        (FetchError::NotFound, true) => "Set not found (deleted, private or a wrong URL)".into(),
        _ => e.to_string(),
    }
}

/// A listed entry's address: its own when we may fetch it, else the API's address of its id
/// (yt-dlp lists a long set's later tracks, which SoundCloud sends as bare ids, at
/// `api-v2.soundcloud.com/tracks/{id}`; `api.soundcloud.com/tracks/{id}` is the same track).
fn listed_url(entry: &Meta) -> Result<String, String> {
    let url = entry.url.as_deref().unwrap_or_default();
    if check_url(url).is_ok() {
        return Ok(url.to_owned());
    }
    let id = entry.id.as_deref().filter(|id| is_numeric_id(id));
    let parsed = url::Url::parse(url).ok();
    let at_its_id = |id: &str| {
        parsed
            .as_ref()
            .is_some_and(|u| u.path().trim_end_matches('/') == format!("/tracks/{id}"))
    };
    match id {
        Some(id) if url.is_empty() || at_its_id(id) => {
            let mut api = url::Url::parse(&format!("https://api.soundcloud.com/tracks/{id}"))
                .map_err(|e| e.to_string())?;
            // A secret set's tracks need its token.
            let token = parsed.as_ref().and_then(|u| {
                u.query_pairs()
                    .find(|(k, _)| k == "secret_token")
                    .map(|(_, v)| v.into_owned())
            });
            if let Some(token) = token {
                api.query_pairs_mut().append_pair("secret_token", &token);
            }
            Ok(api.to_string())
        }
        _ => Err(check_url(url).err().unwrap_or_default()),
    }
}

fn is_numeric_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 20 && id.bytes().all(|b| b.is_ascii_digit())
}

/// The entry's own fields win; SoundCloud fills in what is missing.
/// SoundCloud's id in `meta`, when it is one (digits).
fn soundcloud_id(meta: &Meta) -> Option<String> {
    meta.id.clone().filter(|id| is_numeric_id(id))
}

fn merge(track: &Track, meta: &Meta) -> Track {
    let cap = |s: &str| s.trim().chars().take(MAX_TEXT_CHARS).collect::<String>();
    let pick = |own: &str, found: &Option<String>| {
        if own.is_empty() {
            found.as_deref().map(cap).unwrap_or_default()
        } else {
            own.to_owned()
        }
    };
    let id = match (&*track.id, &meta.id) {
        ("", Some(id)) if is_numeric_id(id) => id.clone(),
        (own, _) => own.to_owned(),
    };
    Track {
        id,
        url: track.url.clone(),
        title: pick(&track.title, &meta.title),
        artist: pick(&track.artist, &meta.artist),
    }
}

/// [`Lookup`] by the pinned yt-dlp, run as scdl is: an argument vector, a deadline, its own
/// process group (killed on every way out), its own HOME and XDG dirs, no credentials in its
/// environment. Not `Debug`: it holds the client id.
#[derive(Clone)]
pub struct YtDlpLookup {
    pub yt_dlp_bin: PathBuf,
    /// Handed to yt-dlp as scdl hands it: in yt-dlp's cache (never on the command line).
    pub client_id: Option<String>,
    pub timeout: Duration,
    /// Where each run's HOME goes (removed after the run).
    pub temp_root: PathBuf,
    /// Short links are expanded before yt-dlp sees them (its SoundCloud extractor has none).
    pub short_links: ShortLinks,
}

/// The command line for `urls`.
pub fn yt_dlp_args(urls: &[String]) -> Vec<OsString> {
    let mut args: Vec<OsString> = YT_DLP_RESOLVE_ARGS.iter().map(OsString::from).collect();
    // After `--` nothing is an option, whatever a URL looks like.
    args.push("--".into());
    args.extend(urls.iter().map(OsString::from));
    args
}

/// Removes a run's temp dir on every way out.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[async_trait]
impl Lookup for YtDlpLookup {
    async fn look_up(&self, urls: &[String]) -> Result<Vec<Result<Found, FetchError>>, FetchError> {
        let mut expanded = Vec::with_capacity(urls.len());
        for url in urls {
            expanded.push(self.short_links.expand(url).await);
        }
        let asked: Vec<String> = expanded.iter().flatten().cloned().collect();
        let answers = if asked.is_empty() {
            HashMap::new()
        } else {
            self.run(&asked).await?
        };
        Ok(expanded
            .into_iter()
            .map(|url| answers[&url?].clone())
            .collect())
    }
}

impl YtDlpLookup {
    /// One yt-dlp run for `urls`: an answer for each.
    async fn run(
        &self,
        urls: &[String],
    ) -> Result<HashMap<String, Result<Found, FetchError>>, FetchError> {
        let deadline = Instant::now() + self.timeout;
        let dir = TempDir(
            self.temp_root
                .join(format!("xomcloud-resolve-{:032x}", rand::random::<u128>())),
        );
        let home = ChildHome::create(&dir.0).await?;
        if let Some(id) = &self.client_id {
            store_client_id(home.cache(), id).await?;
        }
        let finished = run(
            &self.yt_dlp_bin,
            &yt_dlp_args(urls),
            &home.envs(),
            deadline,
            Output::Capture(STDOUT_CAP),
        )
        .await?
        .ok_or(FetchError::TimedOut(self.timeout.as_secs()))?;
        let client_id = self.client_id.as_deref();
        let mut by_url: HashMap<String, Found> = HashMap::new();
        for line in String::from_utf8_lossy(&finished.stdout).lines() {
            let Ok(info) = serde_json::from_str::<Value>(line) else {
                continue;
            };
            if let Some(original) = info.get("original_url").and_then(Value::as_str) {
                by_url.insert(original.to_owned(), found(&info));
            }
        }
        // yt-dlp goes on after a link that fails and says why on stderr.
        let failure = || match error_line(&finished.stderr) {
            Some(line) => classify(line, client_id),
            None => FetchError::Failed(match last_line(&finished.stderr) {
                Some(line) => format!("yt-dlp: {}", scrub(line, client_id)),
                None => "yt-dlp gave no answer".into(),
            }),
        };
        if by_url.is_empty() {
            // Nothing came back for a reason that is not the links' own (unreachable, rate
            // limited, no client id): the lookup failed.
            let e = failure();
            if !matches!(e, FetchError::NotFound) {
                return Err(e);
            }
        }
        Ok(urls
            .iter()
            .map(|url| (url.clone(), by_url.get(url).cloned().ok_or_else(failure)))
            .collect())
    }
}

/// Where scdl puts the client id for yt-dlp (`ydl.cache.store("soundcloud", "client_id", …)`),
/// in yt-dlp's cache format.
async fn store_client_id(cache: &Path, id: &str) -> Result<(), FetchError> {
    let dir = cache.join("yt-dlp").join("soundcloud");
    let body = serde_json::json!({"yt-dlp_version": "2025.01.01", "data": id}).to_string();
    tokio::fs::create_dir_all(&dir)
        .await
        .map_err(|e| FetchError::Failed(format!("temp dir: {e}")))?;
    tokio::fs::write(dir.join("client_id.json"), body)
        .await
        .map_err(|e| FetchError::Failed(format!("temp dir: {e}")))
}

/// yt-dlp's info dict as a track or a set.
fn found(info: &Value) -> Found {
    let text = |v: &Value, key: &str| match v.get(key) {
        Some(Value::String(s)) if !s.trim().is_empty() => Some(s.trim().to_owned()),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    };
    let meta = |v: &Value| Meta {
        id: text(v, "id"),
        url: text(v, "webpage_url").or_else(|| text(v, "url")),
        title: text(v, "title"),
        artist: text(v, "uploader"),
    };
    match info.get("_type").and_then(Value::as_str) {
        Some("playlist") => Found::Set(
            info.get("entries")
                .and_then(Value::as_array)
                .map(|entries| {
                    entries
                        .iter()
                        .map(|e| Meta {
                            // A flat entry's `url` is the track's address.
                            url: text(e, "url").or_else(|| text(e, "webpage_url")),
                            ..meta(e)
                        })
                        .collect()
                })
                .unwrap_or_default(),
        ),
        _ => Found::Track(meta(info)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Answers from a table; records each call's URLs.
    struct Table {
        answers: HashMap<String, Result<Found, FetchError>>,
        calls: Mutex<Vec<Vec<String>>>,
    }

    #[async_trait]
    impl Lookup for Table {
        async fn look_up(
            &self,
            urls: &[String],
        ) -> Result<Vec<Result<Found, FetchError>>, FetchError> {
            self.calls.lock().unwrap().push(urls.to_vec());
            Ok(urls
                .iter()
                .map(|u| {
                    self.answers
                        .get(u)
                        .cloned()
                        .unwrap_or(Err(FetchError::NotFound))
                })
                .collect())
        }
    }

    fn table(answers: Vec<(&str, Result<Found, FetchError>)>) -> Table {
        Table {
            answers: answers
                .into_iter()
                .map(|(u, a)| (u.to_owned(), a))
                .collect(),
            calls: Mutex::new(Vec::new()),
        }
    }

    fn entry(url: &str) -> Track {
        Track {
            id: String::new(),
            url: url.into(),
            title: String::new(),
            artist: String::new(),
        }
    }

    fn meta(id: &str, url: &str, title: Option<&str>) -> Meta {
        Meta {
            id: Some(id.into()),
            url: Some(url.into()),
            title: title.map(Into::into),
            artist: title.map(|_| "A".into()),
        }
    }

    #[tokio::test]
    async fn complete_entries_start_nothing() {
        let lookup = table(vec![]);
        let track = Track {
            id: "1".into(),
            url: "https://soundcloud.com/a/b".into(),
            title: "T".into(),
            artist: "A".into(),
        };
        let out = resolve(vec![track.clone()], 5, &lookup).await.unwrap();
        assert_eq!(out, [track]);
        assert!(lookup.calls.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_set_expands_in_order_and_bare_ids_are_read_again() {
        let set = "https://soundcloud.com/u/sets/s";
        let lookup = table(vec![
            (
                set,
                Ok(Found::Set(vec![
                    meta("11", "https://soundcloud.com/u/one", None),
                    meta("12", "https://api-v2.soundcloud.com/tracks/12", None),
                ])),
            ),
            (
                "https://soundcloud.com/u/one",
                Ok(Found::Track(meta(
                    "11",
                    "https://soundcloud.com/u/one",
                    Some("One"),
                ))),
            ),
            (
                "https://api.soundcloud.com/tracks/12",
                Ok(Found::Track(meta(
                    "12",
                    "https://soundcloud.com/u/two",
                    Some("Two"),
                ))),
            ),
            (
                "https://soundcloud.com/u/solo",
                Ok(Found::Track(meta(
                    "13",
                    "https://soundcloud.com/u/solo-canonical",
                    Some("Solo"),
                ))),
            ),
        ]);
        let kept = Track {
            id: "9".into(),
            url: "https://soundcloud.com/u/kept".into(),
            title: "Kept".into(),
            artist: "Me".into(),
        };
        let solo = Track {
            title: "Mine".into(),
            ..entry("https://soundcloud.com/u/solo")
        };
        let out = resolve(vec![entry(set), kept.clone(), solo], 5, &lookup)
            .await
            .unwrap();
        let got: Vec<(&str, &str, &str, &str)> = out
            .iter()
            .map(|t| {
                (
                    t.id.as_str(),
                    t.url.as_str(),
                    t.title.as_str(),
                    t.artist.as_str(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("11", "https://soundcloud.com/u/one", "One", "A"),
                ("12", "https://soundcloud.com/u/two", "Two", "A"),
                ("9", "https://soundcloud.com/u/kept", "Kept", "Me"),
                ("13", "https://soundcloud.com/u/solo", "Mine", "A"),
            ]
        );
        let calls = lookup.calls.lock().unwrap();
        assert_eq!(calls.len(), 2, "two processes: {calls:?}");
        assert_eq!(calls[0], [set, "https://soundcloud.com/u/solo"]);
        assert_eq!(
            calls[1],
            [
                "https://soundcloud.com/u/one",
                "https://api.soundcloud.com/tracks/12"
            ]
        );
    }

    #[tokio::test]
    async fn a_track_link_that_cannot_be_read_stays_for_its_fetch_to_fail() {
        let lookup = table(vec![(
            "https://soundcloud.com/u/ok",
            Ok(Found::Track(meta(
                "5",
                "https://soundcloud.com/u/ok",
                Some("Ok"),
            ))),
        )]);
        let links = vec![
            entry("https://soundcloud.com/u/gone"),
            entry("https://soundcloud.com/u/ok"),
        ];
        let out = resolve(links, 5, &lookup).await.unwrap();
        let got: Vec<(&str, &str, &str)> = out
            .iter()
            .map(|t| (t.id.as_str(), t.title.as_str(), t.artist.as_str()))
            .collect();
        assert_eq!(got, [("1", "Track 1", "Unknown Artist"), ("5", "Ok", "A")]);
        assert_eq!(out[0].url, "https://soundcloud.com/u/gone");
        assert_eq!(lookup.calls.lock().unwrap().len(), 1, "not asked twice");
    }

    #[tokio::test]
    async fn failures_are_the_jobs_words() {
        let set = "https://soundcloud.com/u/sets/s";
        let many = Found::Set(
            (0..6)
                .map(|i| meta(&i.to_string(), "https://soundcloud.com/u/x", Some("T")))
                .collect(),
        );
        let cases = [
            (Err(FetchError::NotFound), "tracks[0] (https://soundcloud.com/u/sets/s): Set not found (deleted, private or a wrong URL)"),
            (Ok(Found::Set(vec![])), "tracks[0] (https://soundcloud.com/u/sets/s): the set has no tracks"),
            (Ok(many), "The job has 6 tracks once its sets are expanded; at most 5 are allowed"),
            (Ok(Found::Set(vec![meta("1", "https://evil.example/tracks/2", Some("T"))])), "tracks[0] (https://soundcloud.com/u/sets/s): its track 1 has an address we do not fetch"),
        ];
        for (answer, expected) in cases {
            let lookup = table(vec![(set, answer)]);
            let err = resolve(vec![entry(set)], 5, &lookup).await.unwrap_err();
            assert!(err.starts_with(expected), "{err}");
        }
        struct Down;
        #[async_trait]
        impl Lookup for Down {
            async fn look_up(
                &self,
                _: &[String],
            ) -> Result<Vec<Result<Found, FetchError>>, FetchError> {
                Err(FetchError::Unreachable)
            }
        }
        let err = resolve(vec![entry(set)], 5, &Down).await.unwrap_err();
        assert_eq!(err, "Could not read the job's links from SoundCloud: Could not reach SoundCloud (network error); try again later");
    }

    #[test]
    fn a_listed_api_address_becomes_ours_with_its_token() {
        let listed = |id: &str, url: &str| {
            listed_url(&Meta {
                id: Some(id.into()),
                url: Some(url.into()),
                ..Meta::default()
            })
        };
        assert_eq!(
            listed("12", "https://api-v2.soundcloud.com/tracks/12").unwrap(),
            "https://api.soundcloud.com/tracks/12"
        );
        assert_eq!(
            listed(
                "12",
                "https://api-v2.soundcloud.com/tracks/12?secret_token=s-Ab1"
            )
            .unwrap(),
            "https://api.soundcloud.com/tracks/12?secret_token=s-Ab1"
        );
        assert_eq!(
            listed("12", "https://soundcloud.com/u/t").unwrap(),
            "https://soundcloud.com/u/t"
        );
        // Another id's address, or another kind of address, is not rewritten.
        assert!(listed("13", "https://api-v2.soundcloud.com/tracks/12").is_err());
        assert!(listed("12", "https://evil.example/x").is_err());
    }

    #[test]
    fn yt_dlp_output_becomes_tracks_and_sets() {
        let track = serde_json::json!({"id": "5", "title": "T", "uploader": "U", "webpage_url": "https://soundcloud.com/u/t", "original_url": "x"});
        assert_eq!(
            found(&track),
            Found::Track(Meta {
                id: Some("5".into()),
                url: Some("https://soundcloud.com/u/t".into()),
                title: Some("T".into()),
                artist: Some("U".into())
            })
        );
        let set = serde_json::json!({"_type": "playlist", "entries": [{"_type": "url", "id": "7", "url": "https://api-v2.soundcloud.com/tracks/7"}]});
        assert_eq!(
            found(&set),
            Found::Set(vec![Meta {
                id: Some("7".into()),
                url: Some("https://api-v2.soundcloud.com/tracks/7".into()),
                title: None,
                artist: None
            }])
        );
        let args = yt_dlp_args(&["https://soundcloud.com/a/b".into()]);
        assert_eq!(args.last().unwrap(), "https://soundcloud.com/a/b");
        assert_eq!(args[args.len() - 2], "--");
    }
}
