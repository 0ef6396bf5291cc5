//! A real S3 server in-process: s3s + s3s-fs on 127.0.0.1:0, checking SigV4 (presigned URLs
//! included) against one access key.

use std::path::{Path, PathBuf};

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;

pub const ACCESS_KEY: &str = "AKIAXOMCLOUDTEST";
pub const SECRET_KEY: &str = "xomcloud-test-secret-key";
pub const BUCKET: &str = "xomcloud-test";
pub const REGION: &str = "us-east-1";

pub struct S3Server {
    pub endpoint: String,
    root: tempfile::TempDir,
    task: tokio::task::JoinHandle<()>,
}

impl S3Server {
    /// Must run inside a multi-threaded tokio runtime (the server is a task on it).
    pub async fn start() -> Self {
        let root = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir(root.path().join(BUCKET)).expect("bucket dir");
        let fs = s3s_fs::FileSystem::new(root.path()).expect("s3s-fs");
        let mut builder = s3s::service::S3ServiceBuilder::new(fs);
        builder.set_auth(s3s::auth::SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
        let service = builder.build();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let endpoint = format!("http://{}", listener.local_addr().expect("addr"));
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let service = service.clone();
                tokio::spawn(async move {
                    let _ = ConnBuilder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self {
            endpoint,
            root,
            task,
        }
    }

    /// What a process needs to use this server as its S3.
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("AWS_ENDPOINT_URL_S3", self.endpoint.as_str()),
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY),
            ("AWS_REGION", REGION),
            ("S3_DOWNLOAD_BUCKET_NAME", BUCKET),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    /// Keys of the finished objects in the bucket.
    pub fn objects(&self) -> Vec<String> {
        let bucket = self.root.path().join(BUCKET);
        let mut keys = Vec::new();
        walk(&bucket, &mut |p| {
            keys.push(
                p.strip_prefix(&bucket)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned(),
            )
        });
        keys.sort();
        keys
    }

    /// Multipart uploads started and neither completed nor aborted (s3s-fs keeps them as
    /// `.upload-*` files at its root).
    pub fn pending_uploads(&self) -> Vec<PathBuf> {
        std::fs::read_dir(self.root.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(".upload"))
            })
            .collect()
    }

    /// Another (empty) bucket beside [`BUCKET`].
    pub fn add_bucket(&self, name: &str) {
        std::fs::create_dir(self.root.path().join(name)).expect("bucket dir");
    }

    pub fn object_path(&self, key: &str) -> PathBuf {
        self.root.path().join(BUCKET).join(key)
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn walk(dir: &Path, found: &mut dyn FnMut(&Path)) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            walk(&path, found);
        } else {
            found(&path);
        }
    }
}
