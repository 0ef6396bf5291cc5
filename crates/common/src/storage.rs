//! Where finished zips go: S3 (multipart upload + presigned GET) or a local directory with
//! signed links. Chosen once at start-up; the pipeline only sees the `Storage` trait.

use std::path::{Component, Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use tokio::io::AsyncWriteExt;

use crate::presign::LinkSigner;

/// S3's smallest part (all but the last).
pub const MIN_PART_SIZE: usize = 5 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
#[error("storage: {0}")]
pub struct StorageError(pub String);

impl StorageError {
    fn from_sdk<E: std::error::Error>(what: &str, err: E) -> Self {
        Self(format!(
            "{what}: {}",
            aws_sdk_s3::error::DisplayErrorContext(err)
        ))
    }
}

impl From<std::io::Error> for StorageError {
    fn from(err: std::io::Error) -> Self {
        Self(err.to_string())
    }
}

#[async_trait]
pub trait Storage: Send + Sync {
    /// Starts an upload of a downloadable object (`Content-Disposition: attachment` with the
    /// key's last segment as file name).
    async fn create_upload(&self, key: &str) -> Result<Box<dyn Upload>, StorageError>;
    /// A URL that GETs the object until `expires_in` has passed.
    async fn presign_get(&self, key: &str, expires_in: Duration) -> Result<String, StorageError>;
}

/// One object being written in parts, in order; numbered from 1 by the implementation.
#[async_trait]
pub trait Upload: Send {
    async fn put_part(&mut self, data: Bytes) -> Result<(), StorageError>;
    async fn complete(self: Box<Self>) -> Result<(), StorageError>;
    async fn abort(self: Box<Self>) -> Result<(), StorageError>;
}

fn content_type(key: &str) -> &'static str {
    if key.ends_with(".zip") {
        "application/zip"
    } else {
        "application/octet-stream"
    }
}

pub fn content_disposition(key: &str) -> String {
    let name = key.rsplit('/').next().unwrap_or(key);
    let safe: String = name
        .chars()
        .filter(|c| c.is_ascii_graphic() && *c != '"' && *c != '\\')
        .collect();
    format!("attachment; filename=\"{safe}\"")
}

type PartTask = tokio::task::JoinHandle<(Box<dyn Upload>, Result<(), StorageError>, Bytes)>;

/// Buffers bytes into parts of `part_size` and uploads each full part in the background while
/// the next one fills: memory holds two parts whatever the object size, and the writer rarely
/// waits for the network. Part buffers are reused.
pub struct PartWriter {
    upload: Option<Box<dyn Upload>>,
    in_flight: Option<PartTask>,
    buffer: Vec<u8>,
    spare: Option<Vec<u8>>,
    part_size: usize,
    written: u64,
}

impl PartWriter {
    pub fn new(upload: Box<dyn Upload>, part_size: usize) -> Self {
        Self {
            upload: Some(upload),
            in_flight: None,
            buffer: Vec::with_capacity(part_size),
            spare: None,
            part_size,
            written: 0,
        }
    }

    pub fn written(&self) -> u64 {
        self.written
    }

    pub async fn write(&mut self, mut data: &[u8]) -> Result<(), StorageError> {
        self.written += data.len() as u64;
        while !data.is_empty() {
            let take = (self.part_size - self.buffer.len()).min(data.len());
            self.buffer.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.buffer.len() == self.part_size {
                self.send_buffer().await?;
            }
        }
        Ok(())
    }

    /// Waits for the part in flight; its error, if any, surfaces here.
    async fn settle(&mut self) -> Result<(), StorageError> {
        let Some(task) = self.in_flight.take() else {
            return Ok(());
        };
        let (upload, result, sent) = task
            .await
            .map_err(|e| StorageError(format!("part upload task: {e}")))?;
        self.upload = Some(upload);
        if let Ok(buffer) = sent.try_into_mut() {
            let mut buffer: Vec<u8> = buffer.into();
            buffer.clear();
            self.spare = Some(buffer);
        }
        result
    }

    async fn send_buffer(&mut self) -> Result<(), StorageError> {
        self.settle().await?;
        let next = self
            .spare
            .take()
            .unwrap_or_else(|| Vec::with_capacity(self.part_size));
        let part = Bytes::from(std::mem::replace(&mut self.buffer, next));
        let mut upload = self.upload.take().ok_or_else(lost)?;
        self.in_flight = Some(tokio::spawn(async move {
            let result = upload.put_part(part.clone()).await;
            (upload, result, part)
        }));
        Ok(())
    }

    /// Uploads the last (possibly short) part and completes the object.
    pub async fn finish(mut self) -> Result<(), StorageError> {
        if !self.buffer.is_empty() || self.written == 0 {
            self.send_buffer().await?;
        }
        self.settle().await?;
        self.upload.take().ok_or_else(lost)?.complete().await
    }

    pub async fn abort(mut self) -> Result<(), StorageError> {
        let _ = self.settle().await;
        self.upload.take().ok_or_else(lost)?.abort().await
    }
}

fn lost() -> StorageError {
    StorageError("the upload was lost with a failed part task".into())
}

// ---------------------------------------------------------------------------------------------
// S3

pub struct S3Storage {
    client: aws_sdk_s3::Client,
    bucket: String,
}

impl S3Storage {
    /// A custom endpoint (`AWS_ENDPOINT_URL_S3`: MinIO, s3s, LocalStack) is addressed path-style.
    pub fn new(sdk: &aws_config::SdkConfig, bucket: impl Into<String>, path_style: bool) -> Self {
        let config = aws_sdk_s3::config::Builder::from(sdk)
            .force_path_style(path_style)
            .build();
        Self {
            client: aws_sdk_s3::Client::from_conf(config),
            bucket: bucket.into(),
        }
    }
}

#[async_trait]
impl Storage for S3Storage {
    async fn create_upload(&self, key: &str) -> Result<Box<dyn Upload>, StorageError> {
        let out = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .content_type(content_type(key))
            .content_disposition(content_disposition(key))
            .send()
            .await
            .map_err(|e| StorageError::from_sdk("CreateMultipartUpload", e))?;
        let upload_id = out
            .upload_id
            .ok_or_else(|| StorageError("CreateMultipartUpload returned no upload id".into()))?;
        Ok(Box::new(S3Upload {
            client: self.client.clone(),
            bucket: self.bucket.clone(),
            key: key.to_owned(),
            upload_id,
            parts: Vec::new(),
        }))
    }

    async fn presign_get(&self, key: &str, expires_in: Duration) -> Result<String, StorageError> {
        let config = aws_sdk_s3::presigning::PresigningConfig::expires_in(expires_in)
            .map_err(|e| StorageError(e.to_string()))?;
        let request = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .presigned(config)
            .await
            .map_err(|e| StorageError::from_sdk("presign GetObject", e))?;
        Ok(request.uri().to_owned())
    }
}

struct S3Upload {
    client: aws_sdk_s3::Client,
    bucket: String,
    key: String,
    upload_id: String,
    parts: Vec<aws_sdk_s3::types::CompletedPart>,
}

#[async_trait]
impl Upload for S3Upload {
    async fn put_part(&mut self, data: Bytes) -> Result<(), StorageError> {
        let number = self.parts.len() as i32 + 1;
        let bytes = data.len();
        let out = self
            .client
            .upload_part()
            .bucket(&self.bucket)
            .key(&self.key)
            .upload_id(&self.upload_id)
            .part_number(number)
            .body(data.into())
            .send()
            .await
            .map_err(|e| StorageError::from_sdk("UploadPart", e))?;
        tracing::info!(part = number, bytes, "part uploaded");
        self.parts.push(
            aws_sdk_s3::types::CompletedPart::builder()
                .part_number(number)
                .set_e_tag(out.e_tag)
                .build(),
        );
        Ok(())
    }

    async fn complete(self: Box<Self>) -> Result<(), StorageError> {
        let parts = aws_sdk_s3::types::CompletedMultipartUpload::builder()
            .set_parts(Some(self.parts.clone()))
            .build();
        let result = self
            .client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(&self.key)
            .upload_id(&self.upload_id)
            .multipart_upload(parts)
            .send()
            .await;
        if let Err(e) = result {
            let err = StorageError::from_sdk("CompleteMultipartUpload", e);
            let _ = self.abort().await;
            return Err(err);
        }
        Ok(())
    }

    async fn abort(self: Box<Self>) -> Result<(), StorageError> {
        self.client
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(&self.key)
            .upload_id(&self.upload_id)
            .send()
            .await
            .map_err(|e| StorageError::from_sdk("AbortMultipartUpload", e))?;
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Local disk

/// Objects under a directory; links point at the dev server's `GET /files/{key}`.
pub struct LocalStorage {
    root: PathBuf,
    base_url: String,
    signer: LinkSigner,
}

impl LocalStorage {
    pub fn new(root: impl Into<PathBuf>, base_url: impl Into<String>, signer: LinkSigner) -> Self {
        Self {
            root: root.into(),
            base_url: base_url.into().trim_end_matches('/').to_owned(),
            signer,
        }
    }

    /// The file behind a key; `None` for anything that could leave the root.
    pub fn path_of(&self, key: &str) -> Option<PathBuf> {
        let relative = Path::new(key);
        let plain = relative
            .components()
            .all(|c| matches!(c, Component::Normal(_)));
        (plain && !key.is_empty()).then(|| self.root.join(relative))
    }

    pub fn signer(&self) -> &LinkSigner {
        &self.signer
    }
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[async_trait]
impl Storage for LocalStorage {
    async fn create_upload(&self, key: &str) -> Result<Box<dyn Upload>, StorageError> {
        let path = self
            .path_of(key)
            .ok_or_else(|| StorageError(format!("invalid key {key:?}")))?;
        if let Some(dir) = path.parent() {
            tokio::fs::create_dir_all(dir).await?;
        }
        let partial = path.with_extension("partial");
        let file = tokio::fs::File::create(&partial).await?;
        Ok(Box::new(LocalUpload {
            file,
            partial,
            path,
        }))
    }

    async fn presign_get(&self, key: &str, expires_in: Duration) -> Result<String, StorageError> {
        let expires = unix_now() + expires_in.as_secs();
        let signature = self.signer.sign(key, expires);
        Ok(format!(
            "{}/files/{key}?expires={expires}&signature={signature}",
            self.base_url
        ))
    }
}

struct LocalUpload {
    file: tokio::fs::File,
    partial: PathBuf,
    path: PathBuf,
}

#[async_trait]
impl Upload for LocalUpload {
    async fn put_part(&mut self, data: Bytes) -> Result<(), StorageError> {
        self.file.write_all(&data).await?;
        Ok(())
    }

    async fn complete(mut self: Box<Self>) -> Result<(), StorageError> {
        self.file.flush().await?;
        self.file.sync_all().await?;
        tokio::fs::rename(&self.partial, &self.path).await?;
        Ok(())
    }

    async fn abort(self: Box<Self>) -> Result<(), StorageError> {
        drop(self.file);
        tokio::fs::remove_file(&self.partial).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Recorder(Arc<Mutex<Vec<usize>>>);

    #[async_trait]
    impl Upload for Recorder {
        async fn put_part(&mut self, data: Bytes) -> Result<(), StorageError> {
            self.0.lock().unwrap().push(data.len());
            Ok(())
        }
        async fn complete(self: Box<Self>) -> Result<(), StorageError> {
            Ok(())
        }
        async fn abort(self: Box<Self>) -> Result<(), StorageError> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn parts_are_full_but_the_last() {
        let rec = Recorder::default();
        let mut w = PartWriter::new(Box::new(rec.clone()), 10);
        for chunk in [&[0u8; 7][..], &[0; 7], &[0; 9], &[0; 1]] {
            w.write(chunk).await.unwrap();
        }
        assert_eq!(w.written(), 24);
        w.finish().await.unwrap();
        assert_eq!(*rec.0.lock().unwrap(), vec![10, 10, 4]);
    }

    #[tokio::test]
    async fn an_empty_object_is_one_empty_part() {
        let rec = Recorder::default();
        PartWriter::new(Box::new(rec.clone()), 10)
            .finish()
            .await
            .unwrap();
        assert_eq!(*rec.0.lock().unwrap(), vec![0]);
    }

    #[test]
    fn local_keys_cannot_escape() {
        let s = LocalStorage::new("/data", "http://x", LinkSigner::new(b"k"));
        assert_eq!(s.path_of("a/b.zip"), Some(PathBuf::from("/data/a/b.zip")));
        for bad in ["../x", "/etc/passwd", "a/../../x", "", "./a"] {
            assert_eq!(s.path_of(bad), None, "{bad}");
        }
    }

    #[tokio::test]
    async fn local_upload_completes_and_aborts() {
        let dir = tempfile::tempdir().unwrap();
        let s = LocalStorage::new(dir.path(), "http://127.0.0.1:3000/", LinkSigner::new(b"k"));
        let mut up = s.create_upload("me/1/x.zip").await.unwrap();
        up.put_part(Bytes::from_static(b"abc")).await.unwrap();
        up.complete().await.unwrap();
        assert_eq!(
            std::fs::read(dir.path().join("me/1/x.zip")).unwrap(),
            b"abc"
        );

        let up = s.create_upload("me/2/x.zip").await.unwrap();
        up.abort().await.unwrap();
        assert!(std::fs::read_dir(dir.path().join("me/2"))
            .unwrap()
            .next()
            .is_none());

        let url = s
            .presign_get("me/1/x.zip", Duration::from_secs(60))
            .await
            .unwrap();
        assert!(
            url.starts_with("http://127.0.0.1:3000/files/me/1/x.zip?expires="),
            "{url}"
        );
    }

    #[test]
    fn disposition_names_the_file() {
        assert_eq!(
            content_disposition("a/b/xomcloud-tracks.zip"),
            "attachment; filename=\"xomcloud-tracks.zip\""
        );
    }
}
