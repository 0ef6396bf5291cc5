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
