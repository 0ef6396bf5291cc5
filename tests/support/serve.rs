//! `xomcloud serve` as a child process for the end-to-end tests: a bare working directory,
//! local mode, the scdl stub; its output collected as it comes.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// `xomcloud` in `cwd`: no `.env`, no `.venv`, no data dir of the developer's; the scdl stub.
pub fn xomcloud(cwd: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_xomcloud"));
    cmd.current_dir(cwd)
        .env_remove("API_SECRET_KEY")
        .env_remove("S3_DOWNLOAD_BUCKET_NAME")
        .env_remove("SOUNDCLOUD_CLIENT_ID")
        .env_remove("SOUNDCLOUD_CLIENT_SECRET")
        .env_remove("SOUNDCLOUD_TOKEN_TIMEOUT_SECONDS")
        .env("SCDL_BIN", super::stub::stub_scdl())
        .env("XOMCLOUD_DATA_DIR", cwd.join("data"))
        .env("TRACK_TIMEOUT_SECONDS", "5")
        .envs(super::stub::stub_env());
    cmd
}

pub struct Server {
    pub child: Child,
    pub base: String,
    /// Stdout up to the listening line and, without a configured secret, the token lines.
    pub banner: Vec<String>,
    output: Arc<Mutex<String>>,
}

impl Server {
    /// Everything the server printed so far (stdout and stderr).
    pub fn output(&self) -> String {
        self.output
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Kills the server at once (no graceful shutdown): a crash or a power cut.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

fn collect(stream: impl Read + Send + 'static, output: Arc<Mutex<String>>) {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            let mut out = output.lock().unwrap_or_else(|e| e.into_inner());
            out.push_str(&line);
            out.push('\n');
        }
    });
}

/// Starts `xomcloud serve` on a free port with `secret` as `API_SECRET_KEY` (none: it makes
/// one and prints a token) and `envs`, and reads its banner.
pub fn serve(cwd: &Path, secret: Option<&str>, envs: &[(&str, &str)]) -> Server {
    let mut cmd = xomcloud(cwd);
    cmd.args(["serve", "--addr", "127.0.0.1:0"])
        .envs(envs.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(s) = secret {
        cmd.env("API_SECRET_KEY", s);
    }
    let mut child = cmd.spawn().expect("start xomcloud serve");
    let output = Arc::new(Mutex::new(String::new()));
    collect(child.stderr.take().expect("stderr"), output.clone());
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let mut banner = Vec::new();
    let mut base = None;
    let done = |banner: &[String]| match secret {
        Some(_) => banner.iter().any(|l| l.starts_with("storage: ")),
        None => banner.iter().any(|l| l.starts_with("try: ")),
    };
    while !done(&banner) {
        let mut line = String::new();
        let read = stdout
            .read_line(&mut line)
            .expect("a line of serve's output");
        assert!(
            read > 0,
            "serve exited during its banner: {}",
            output.lock().unwrap()
        );
        let line = line.trim_end().to_owned();
        if let Some(url) = line.strip_prefix("xomcloud listening on ") {
            base = Some(url.to_owned());
        }
        output.lock().unwrap().push_str(&format!("{line}\n"));
        banner.push(line);
    }
    // The reader keeps what it buffered beyond the banner.
    collect(stdout, output.clone());
    Server {
        child,
        base: base.expect("listening line"),
        banner,
        output,
    }
}

/// `xomcloud token --sub SUB` signed with `secret`, valid 10 minutes.
pub fn token(sub: &str, secret: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_xomcloud"))
        .args(["token", "--sub", sub, "--ttl", "10m"])
        .env("API_SECRET_KEY", secret)
        .current_dir(std::env::temp_dir())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// Polls `check` every 50 ms until it returns `Some`, for at most `limit`.
pub async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One caller of `serve`'s API: a principal's token over HTTP, from 127.0.0.1 or another
/// loopback address (the same principal from another address is another caller for the rate
/// limits, as the visitors of one front end are).
pub struct Caller {
    http: reqwest::Client,
    base: String,
    auth: String,
}

/// How long [`Caller::until`] and [`Caller::until_final`] wait for a job.
pub const JOB_LIMIT: Duration = Duration::from_secs(90);

impl Caller {
    pub fn new(server: &Server, sub: &str, secret: &str) -> Self {
        Self {
            http: reqwest::Client::new(),
            base: server.base.clone(),
            auth: format!("Bearer {}", token(sub, secret)),
        }
    }

    /// `sub` connecting from `local` (a loopback address).
    pub fn from_address(server: &Server, sub: &str, secret: &str, local: &str) -> Self {
        let http = reqwest::Client::builder()
            .local_address(local.parse::<std::net::IpAddr>().unwrap())
            .build()
            .unwrap();
        Self {
            http,
            ..Self::new(server, sub, secret)
        }
    }

    /// The `Authorization` header value this caller sends.
    pub fn auth(&self) -> &str {
        &self.auth
    }

    /// `POST /download` with `{"tracks": …}`: status, body, headers.
    pub async fn download(
        &self,
        tracks: impl serde::Serialize,
    ) -> (u16, serde_json::Value, reqwest::header::HeaderMap) {
        self.create("/download", tracks, None).await
    }

    /// `POST /jobs` with `{"tracks": …}` and an optional `Idempotency-Key`: status, body, headers.
    pub async fn post(
        &self,
        tracks: impl serde::Serialize,
        key: Option<&str>,
    ) -> (u16, serde_json::Value, reqwest::header::HeaderMap) {
        self.create("/jobs", tracks, key).await
    }

    async fn create(
        &self,
        path: &str,
        tracks: impl serde::Serialize,
        key: Option<&str>,
    ) -> (u16, serde_json::Value, reqwest::header::HeaderMap) {
        let mut request = self
            .http
            .post(format!("{}{path}", self.base))
            .header("Authorization", &self.auth)
            .json(&serde_json::json!({ "tracks": tracks }));
        if let Some(key) = key {
            request = request.header("Idempotency-Key", key);
        }
        let res = request.send().await.unwrap();
        let status = res.status().as_u16();
        let headers = res.headers().clone();
        (status, res.json().await.unwrap(), headers)
    }

    /// `GET /jobs/{id}`: status, body.
    pub async fn get(&self, id: &str) -> (u16, serde_json::Value) {
        self.send(self.http.get(format!("{}/jobs/{id}", self.base)))
            .await
    }

    /// `DELETE /jobs/{id}`: status, body.
    pub async fn delete(&self, id: &str) -> (u16, serde_json::Value) {
        self.send(self.http.delete(format!("{}/jobs/{id}", self.base)))
            .await
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> (u16, serde_json::Value) {
        let res = request
            .header("Authorization", &self.auth)
            .send()
            .await
            .unwrap();
        (res.status().as_u16(), res.json().await.unwrap())
    }

    /// Polls until the job's status is `status`; its last view (`data`).
    pub async fn until(&self, id: &str, status: &str) -> serde_json::Value {
        eventually(JOB_LIMIT, &format!("job {id} {status}"), || async {
            let (_, body) = self.get(id).await;
            (body["data"]["status"] == status).then_some(body["data"].clone())
        })
        .await
    }

    /// Polls until the job is final (done, failed or cancelled); its last view (`data`).
    pub async fn until_final(&self, id: &str) -> serde_json::Value {
        eventually(JOB_LIMIT, &format!("job {id} final"), || async {
            let (status, body) = self.get(id).await;
            assert_eq!(status, 200, "GET /jobs/{id}: {body}");
            matches!(
                body["data"]["status"].as_str(),
                Some("done" | "failed" | "cancelled")
            )
            .then_some(body["data"].clone())
        })
        .await
    }
}
