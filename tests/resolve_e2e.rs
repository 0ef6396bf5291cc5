//! Links in, tracks out, with the real tool: `xomcloud serve` resolves a job's links with the
//! pinned yt-dlp from `.venv` against the SoundCloud API served by this test
//! (`support::soundcloud_api`, reached through `tests/fixtures/real_scdl/sitecustomize.py`);
//! the tracks themselves are fetched by the scdl stub (the real scdl is `real_scdl_e2e.rs`'s),
//! so the stub's log shows exactly which URLs resolution handed on. Nothing reaches the network.

mod support;

use std::path::Path;

use serde_json::{json, Value};
use support::bins::tools_bin;
use support::serve::{serve, Caller, Server};
use support::soundcloud_api::{set_track_slugs, SoundCloudApi};
use support::stub::logged_urls;

const SECRET: &str = "resolve-e2e-secret";
const CLIENT_ID: &str = "resolve-e2e-client-id-3b9d";
const SET: &str = "https://soundcloud.com/fake-artist/sets";

struct Setup {
    api: SoundCloudApi,
    server: Server,
    dir: tempfile::TempDir,
    alice: Caller,
}

impl Setup {
    /// serve with the real yt-dlp pointed at the fake API (`fake_base` overrides its address),
    /// the scdl stub logging to `scdl.log`, `MAX_JOB_TRACKS=12`, no rate limits.
    async fn start(fake_base: Option<&str>) -> Self {
        let api = SoundCloudApi::start(
            std::fs::read(support::media::sample_mp3()).unwrap(),
            Vec::new(),
            3,
        )
        .await;
        let dir = tempfile::tempdir().unwrap();
        let pids = dir.path().join("pids");
        let log = dir.path().join("scdl.log");
        let tmp = dir.path().join("tmp");
        std::fs::create_dir_all(&tmp).unwrap();
        let yt_dlp = tools_bin("yt-dlp");
        let mut env = api.scdl_env(&pids);
        if let Some(base) = fake_base {
            env.retain(|(k, _)| k != "XOMCLOUD_FAKE_SOUNDCLOUD");
            env.push(("XOMCLOUD_FAKE_SOUNDCLOUD".into(), base.into()));
        }
        for (k, v) in [
            ("YT_DLP_BIN", yt_dlp.to_str().unwrap()),
            ("SOUNDCLOUD_CLIENT_ID", CLIENT_ID),
            ("SCDL_STUB_LOG", log.to_str().unwrap()),
            ("TMPDIR", tmp.to_str().unwrap()),
            ("MAX_JOB_TRACKS", "12"),
            ("RATE_LIMIT_PER_MINUTE", "0"),
            ("MAX_ACTIVE_JOBS_PER_CALLER", "0"),
            // Generous: a slow machine must not turn a case into "Timed out".
            ("TRACK_TIMEOUT_SECONDS", "90"),
        ] {
            env.push((k.into(), v.into()));
        }
        let refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let server = serve(dir.path(), Some(SECRET), &refs);
        Self {
            api,
            alice: Caller::new(&server, "alice", SECRET),
            server,
            dir,
        }
    }

    fn path(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
    }

    /// The URLs the scdl stub was run with, sorted (tracks run four at a time).
    fn scdl_urls(&self) -> Vec<String> {
        let log = self.path("scdl.log");
        let mut urls = if log.exists() {
            logged_urls(&log)
        } else {
            Vec::new()
        };
        urls.sort();
        urls
    }

    /// The Python processes (yt-dlp) started so far, one line each (`sitecustomize.py`).
    fn python_runs(&self) -> usize {
        std::fs::read_to_string(self.path("pids"))
            .map(|s| s.lines().count())
            .unwrap_or(0)
    }

    /// `POST /jobs` (202) then polls until the job is final; its last view.
    async fn job(&self, tracks: Value) -> Value {
        let (status, body, _) = self.alice.post(tracks, None).await;
        assert_eq!(status, 202, "{body}");
        let id = body["data"]["job_id"].as_str().unwrap();
        self.alice.until_final(id).await
    }
}

fn column(job: &Value, key: &str) -> Vec<String> {
    job["tracks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t[key].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_set_expands_in_order_and_bare_links_get_their_titles() {
    let s = Setup::start(None).await;

    // A set of 12 (the first 5 whole, 7 as bare ids): 12 tracks in the set's order, done.
    let job = s.job(json!([{"url": format!("{SET}/n12-mix")}])).await;
    assert_eq!(job["status"], "done", "{job}\n{}", s.server.output());
    assert_eq!(
        (job["total"].clone(), job["done"].clone()),
        (json!(12), json!(12))
    );
    let slugs = set_track_slugs("n12-mix");
    let titles: Vec<String> = slugs
        .iter()
        .map(|s| format!("SoundCloud title of {s}"))
        .collect();
    assert_eq!(column(&job, "title"), titles);
    assert!(column(&job, "artist").iter().all(|a| a == "Fake Artist"));
    assert!(
        column(&job, "id")
            .iter()
            .all(|id| id.parse::<u64>().is_ok()),
        "{job}"
    );
    let expected: Vec<String> = titles
        .iter()
        .map(|t| format!("Fake Artist - {t}.mp3"))
        .collect();
    assert_eq!(
        support::zips::names_at(job["download_url"].as_str().unwrap()).await,
        expected
    );
    // Every track was fetched at its permalink (bare ids were read at /tracks/{id} first).
    let mut permalinks: Vec<String> = slugs
        .iter()
        .map(|s| format!("https://soundcloud.com/fake-artist/{s}"))
        .collect();
    permalinks.sort();
    assert_eq!(s.scdl_urls(), permalinks);
    // Cached under SoundCloud's ids, as resolution read them.
    for id in column(&job, "id") {
        let cached = s.path("data/.cache/tracks").join(format!("sc{id}.mp3"));
        assert!(cached.is_file(), "{} missing", cached.display());
    }
    let seen = s.api.received();
    let by_id = seen
        .iter()
        .filter(|r| r.starts_with("GET /tracks/"))
        .count();
    assert_eq!(by_id, 7, "{seen:#?}");
    // Two yt-dlp runs: the listing, then the tracks it left without a title.
    assert_eq!(s.python_runs(), 2);
    // The configured client id went to SoundCloud on every call; no id leaked to the logs.
    assert!(
        seen.iter()
            .all(|r| r.contains(&format!("client_id={CLIENT_ID}"))),
        "{seen:#?}"
    );
    assert!(!s.server.output().contains(CLIENT_ID), "client id in logs");

    // A secret set (its token in the link): yt-dlp reads its bare ids with the batch endpoint.
    let job = s
        .job(json!([{"url": format!("{SET}/n7-secret/s-T0ken")}]))
        .await;
    assert_eq!(job["status"], "done", "{job}");
    let titles: Vec<String> = set_track_slugs("n7-secret")
        .iter()
        .map(|s| format!("SoundCloud title of {s}"))
        .collect();
    assert_eq!(column(&job, "title"), titles);
    let seen = s.api.received();
    assert!(
        seen.iter().any(|r| r.starts_with("GET /tracks?ids=")),
        "{seen:#?}"
    );
    assert_eq!(s.python_runs(), 4);

    // Bare track links: title and artist from SoundCloud; a title given is kept; a link
    // SoundCloud does not know stays, and fails on its own row when it is fetched.
    let job = s
        .job(json!([
            {"url": "https://soundcloud.com/fake-artist/ok-solo"},
            {"url": "https://soundcloud.com/fake-artist/ok-named", "title": "My Name"},
            {"url": "https://soundcloud.com/fake-artist/notfound-gone"},
        ]))
        .await;
    assert_eq!(job["status"], "done", "{job}");
    assert_eq!(
        column(&job, "title"),
        ["SoundCloud title of ok-solo", "My Name", "Track 3"]
    );
    assert_eq!(
        column(&job, "artist"),
        ["Fake Artist", "Fake Artist", "Unknown Artist"]
    );
    assert_eq!(column(&job, "state"), ["done", "done", "failed"]);
    assert_eq!(
        job["tracks"][2]["error"],
        "Track not found (deleted, private or a wrong URL)"
    );
    assert_eq!(
        s.python_runs(),
        5,
        "one more yt-dlp run for all three links"
    );

    // Complete entries need nothing: no yt-dlp, no API call.
    let calls = s.api.received().len();
    let job = s
        .job(
            json!([{"id": "1", "url": "https://soundcloud.com/fake-artist/ok-whole",
                     "title": "Whole", "artist": "Me"}]),
        )
        .await;
    assert_eq!(job["status"], "done", "{job}");
    assert_eq!((s.python_runs(), s.api.received().len()), (5, calls));

    // POST /download refuses a set, pointing to /jobs, and starts nothing.
    let scdl_runs = s.scdl_urls().len();
    let (status, body, _) = s
        .alice
        .download(json!([{"id": "5", "url": format!("{SET}/n12-mix")}]))
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "VALIDATION_ERROR");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("set") && message.contains("/jobs"),
        "{message}"
    );
    assert_eq!(
        (s.python_runs(), s.api.received().len(), s.scdl_urls().len()),
        (5, calls, scdl_runs)
    );
    assert_left_nothing(&s.path("tmp"));
}

#[tokio::test(flavor = "multi_thread")]
async fn sets_that_cannot_be_expanded_fail_the_job_in_plain_words() {
    let s = Setup::start(None).await;
    let cases = [
        (
            "notfound-gone",
            "tracks[0] (https://soundcloud.com/fake-artist/sets/notfound-gone): Set not found (deleted, private or a wrong URL)",
        ),
        (
            "private-mine",
            "tracks[0] (https://soundcloud.com/fake-artist/sets/private-mine): Set not found (deleted, private or a wrong URL)",
        ),
        (
            "empty-nothing",
            "tracks[0] (https://soundcloud.com/fake-artist/sets/empty-nothing): the set has no tracks",
        ),
        (
            "n13-long",
            "The job has 13 tracks once its sets are expanded; at most 12 are allowed",
        ),
    ];
    for (name, error) in cases {
        let job = s.job(json!([{"url": format!("{SET}/{name}")}])).await;
        assert_eq!(job["status"], "failed", "{name}: {job}");
        assert_eq!(job["error"], error, "{name}");
    }
    // A set of 12 plus one more link is over the limit too.
    let job = s
        .job(json!([{"url": format!("{SET}/n12-mix")},
                    {"url": "https://soundcloud.com/fake-artist/ok-one-more"}]))
        .await;
    assert_eq!(job["status"], "failed", "{job}");
    assert_eq!(
        job["error"],
        "The job has 13 tracks once its sets are expanded; at most 12 are allowed"
    );
    assert!(
        s.scdl_urls().is_empty(),
        "no track fetched: {:?}",
        s.scdl_urls()
    );
    assert_left_nothing(&s.path("tmp"));
}

#[tokio::test(flavor = "multi_thread")]
async fn soundcloud_unreachable_fails_the_job() {
    // The fake's address is a closed port.
    let s = Setup::start(Some("http://127.0.0.1:9")).await;
    let job = s.job(json!([{"url": format!("{SET}/n12-mix")}])).await;
    assert_eq!(job["status"], "failed", "{job}");
    assert_eq!(
        job["error"],
        "Could not read the job's links from SoundCloud: Could not reach SoundCloud (network error); try again later"
    );
    assert!(s.scdl_urls().is_empty());
    assert!(s.api.received().is_empty());
    assert_left_nothing(&s.path("tmp"));
}

/// Short links (on.soundcloud.com, what the app's Share button copies; neither scdl nor yt-dlp
/// fetches one) are asked where they lead, here at the fake's `/on/`: in a job a short link to a
/// set expands like the set, one to a track is fetched at the track's own address (its title
/// as given), a dead one fails its row; `POST /download` fetches a short link's track, and
/// fails the row of one that leads to a set, pointing to jobs.
#[tokio::test(flavor = "multi_thread")]
async fn short_links_lead_to_their_tracks_and_sets() {
    let s = Setup::start(None).await;
    let job = s
        .job(json!([
            // Complete as the front end sends entries: a short link is resolved all the same.
            {"id": "7", "url": "https://on.soundcloud.com/s-n3-shared",
             "title": "My Playlist", "artist": "Me"},
            {"id": "9", "url": "https://on.soundcloud.com/hop-t-ok-given",
             "title": "Given", "artist": "Me"},
            {"url": "https://on.soundcloud.com/gone"},
        ]))
        .await;
    assert_eq!(job["status"], "done", "{job}\n{}", s.server.output());
    let mut titles: Vec<String> = set_track_slugs("n3-shared")
        .iter()
        .map(|s| format!("SoundCloud title of {s}"))
        .collect();
    titles.extend(["Given".into(), "Track 5".into()]);
    assert_eq!(column(&job, "title"), titles);
    assert_eq!(
        column(&job, "state"),
        ["done", "done", "done", "done", "failed"]
    );
    assert_eq!(
        job["tracks"][4]["error"],
        "Track not found (deleted, private or a wrong URL)"
    );
    let mut fetched: Vec<String> = set_track_slugs("n3-shared")
        .iter()
        .chain(&["ok-given".to_owned()])
        .map(|s| format!("https://soundcloud.com/fake-artist/{s}"))
        .collect();
    fetched.sort();
    assert_eq!(s.scdl_urls(), fetched, "the dead link reaches no scdl");
    let seen = s.api.received();
    for code in ["s-n3-shared", "hop-t-ok-given", "t-ok-given", "gone"] {
        assert!(
            seen.iter().any(|r| r == &format!("GET /on/{code}")),
            "{code} not asked: {seen:#?}"
        );
    }

    // The synchronous endpoint: a short link to a track is fetched at its address; one to a
    // set is that row's failure (scdl never sees it), one leading off SoundCloud too.
    let (status, body, _) = s
        .alice
        .download(json!([
            {"id": "1", "url": "https://on.soundcloud.com/t-ok-direct", "title": "Direct"},
            {"id": "2", "url": "https://on.soundcloud.com/s-n3-shared"},
            {"id": "3", "url": "https://on.soundcloud.com/away-elsewhere"},
        ]))
        .await;
    assert_eq!(status, 200, "{body}");
    let data = &body["data"];
    assert_eq!(data["successful"], 1, "{data}");
    let mut failed: Vec<(&str, &str)> = data["failed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| (f["id"].as_str().unwrap(), f["error"].as_str().unwrap()))
        .collect();
    failed.sort();
    assert_eq!(failed.len(), 2, "{data}");
    assert_eq!(failed[0], ("2", xomcloud_download_tracks::scdl::SET_LINK));
    assert_eq!(failed[1].0, "3");
    assert!(
        failed[1].1.contains("an address we do not fetch"),
        "{}",
        failed[1].1
    );
    fetched.push("https://soundcloud.com/fake-artist/ok-direct".into());
    fetched.sort();
    assert_eq!(s.scdl_urls(), fetched);
    assert_left_nothing(&s.path("tmp"));
}

/// Every run removed its temp dir (yt-dlp's HOME included).
fn assert_left_nothing(tmp: &Path) {
    let left: Vec<_> = std::fs::read_dir(tmp)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "left in TMPDIR: {left:?}");
}
