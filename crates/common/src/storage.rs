//! Where finished zips go: S3 (multipart upload + presigned GET) or a local directory with
//! signed links. Chosen once at start-up; the pipeline only sees the `Storage` trait.

use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use tokio::task::JoinSet;

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

/// One part of an object: its number (from 1) and where its bytes start in the object.
#[derive(Debug, Clone)]
pub struct Part {
    pub number: i32,
    pub offset: u64,
    pub data: Bytes,
}

/// One object being written in parts. Several parts may be in flight at once and finish in any
/// order; `complete` or `abort` is called once, after every `put_part` has returned.
#[async_trait]
pub trait Upload: Send + Sync {
    async fn put_part(&self, part: Part) -> Result<(), StorageError>;
    async fn complete(&self) -> Result<(), StorageError>;
    async fn abort(&self) -> Result<(), StorageError>;
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

/// Buffers bytes into parts of `part_size` and uploads each full part in the background, up to
/// `in_flight` parts at once, while the next one fills: memory holds at most `in_flight + 1`
/// parts whatever the object size, and the writer waits for the network only when every slot
/// is busy. Part buffers are reused.
pub struct PartWriter {
    upload: Arc<dyn Upload>,
    tasks: JoinSet<(Result<(), StorageError>, Bytes)>,
    in_flight: usize,
    buffer: Vec<u8>,
    spare: Vec<Vec<u8>>,
    part_size: usize,
    next_number: i32,
    /// Bytes handed to parts so far: the next part's offset.
    sent: u64,
    written: u64,
}

impl PartWriter {
    pub fn new(upload: Box<dyn Upload>, part_size: usize, in_flight: usize) -> Self {
        Self {
            upload: Arc::from(upload),
            tasks: JoinSet::new(),
            in_flight: in_flight.max(1),
            buffer: Vec::with_capacity(part_size),
            spare: Vec::new(),
            part_size,
            next_number: 1,
            sent: 0,
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

    /// Appends exactly `len` bytes read from `source`, on a blocking thread, straight into the
    /// part buffer: one read per part, no intermediate copy.
    pub async fn write_from<R: std::io::Read + Send + 'static>(
        &mut self,
        source: R,
        len: u64,
    ) -> Result<(), StorageError> {
        let mut source = source;
        let mut left = len;
        while left > 0 {
            let take = ((self.part_size - self.buffer.len()) as u64).min(left);
            let mut buffer = std::mem::take(&mut self.buffer);
            let (reader, buffer, read) = tokio::task::spawn_blocking(move || {
                use std::io::Read;
                let mut reader = source;
                let read = (&mut reader).take(take).read_to_end(&mut buffer);
                (reader, buffer, read)
            })
            .await
            .map_err(|e| StorageError(format!("read task: {e}")))?;
            self.buffer = buffer;
            let read = read? as u64;
            self.written += read;
            if read < take {
                return Err(StorageError(format!(
                    "the source ended {} bytes early",
                    left - read
                )));
            }
            left -= take;
            source = reader;
            if self.buffer.len() == self.part_size {
                self.send_buffer().await?;
            }
        }
        Ok(())
    }

    /// Waits for one part in flight; its error, if any, surfaces here.
    async fn reap_one(&mut self) -> Result<(), StorageError> {
        let Some(joined) = self.tasks.join_next().await else {
            return Ok(());
        };
        let (result, sent) = joined.map_err(|e| StorageError(format!("part upload task: {e}")))?;
        if let Ok(buffer) = sent.try_into_mut() {
            let mut buffer: Vec<u8> = buffer.into();
            buffer.clear();
            self.spare.push(buffer);
        }
        result
    }

    async fn send_buffer(&mut self) -> Result<(), StorageError> {
        while self.tasks.len() >= self.in_flight {
            self.reap_one().await?;
        }
        let next = self
            .spare
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(self.part_size));
        let data = Bytes::from(std::mem::replace(&mut self.buffer, next));
        let part = Part {
            number: self.next_number,
            offset: self.sent,
            data: data.clone(),
        };
        self.next_number += 1;
        self.sent += data.len() as u64;
        let upload = self.upload.clone();
        self.tasks.spawn(async move {
            let result = upload.put_part(part).await;
            (result, data)
        });
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), StorageError> {
        if !self.buffer.is_empty() || self.written == 0 {
            self.send_buffer().await?;
        }
        while !self.tasks.is_empty() {
            self.reap_one().await?;
        }
        Ok(())
    }

    /// Uploads the last (possibly short) part and completes the object; on any failure the
    /// upload is aborted.
    pub async fn finish(mut self) -> Result<(), StorageError> {
        if let Err(err) = self.flush().await {
            if let Err(abort) = self.abort().await {
                tracing::warn!(error = %abort, "aborting the upload failed");
            }
            return Err(err);
        }
        self.upload.complete().await
    }

    /// Stops the parts in flight and discards the upload.
    pub async fn abort(mut self) -> Result<(), StorageError> {
        self.tasks.shutdown().await;
        self.upload.abort().await
    }
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
            parts: Mutex::new(Vec::new()),
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
    /// The parts stored so far, in the order they finished.
    parts: Mutex<Vec<aws_sdk_s3::types::CompletedPart>>,
}

#[async_trait]
impl Upload for S3Upload {
    async fn put_part(&self, part: Part) -> Result<(), StorageError> {
        let Part { number, data, .. } = part;
        let bytes = data.len();
        let out = self
            .client
            .upload_part()
            .bucket(&self.bucket)
            .key(&self.key)
            .upload_id(&self.upload_id)
            .part_number(number)
            .body(data.into())
            // The body is covered by the CRC32 checksum header the SDK adds (signed, and
            // checked by S3) and by TLS: hashing it again with SHA-256 for the signature only
            // costs CPU, on a function whose CPU share is small.
            .customize()
            .disable_payload_signing()
            .send()
            .await
            .map_err(|e| StorageError::from_sdk("UploadPart", e))?;
        tracing::info!(part = number, bytes, "part uploaded");
        let done = aws_sdk_s3::types::CompletedPart::builder()
            .part_number(number)
            .set_e_tag(out.e_tag)
            .build();
        self.parts.lock().expect("parts lock").push(done);
        Ok(())
    }

    async fn complete(&self) -> Result<(), StorageError> {
        let mut parts = self.parts.lock().expect("parts lock").clone();
        parts.sort_by_key(|p| p.part_number);
        let parts = aws_sdk_s3::types::CompletedMultipartUpload::builder()
            .set_parts(Some(parts))
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

    async fn abort(&self) -> Result<(), StorageError> {
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
        let file = tokio::fs::File::create(&partial).await?.into_std().await;
        Ok(Box::new(LocalUpload {
            file: Arc::new(file),
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

/// Written at each part's offset into `<key>.partial`, renamed to the key when complete.
struct LocalUpload {
    file: Arc<std::fs::File>,
    partial: PathBuf,
    path: PathBuf,
}

impl LocalUpload {
    async fn on_file<T: Send + 'static>(
        &self,
        work: impl FnOnce(&std::fs::File) -> std::io::Result<T> + Send + 'static,
    ) -> Result<T, StorageError> {
        let file = self.file.clone();
        tokio::task::spawn_blocking(move || work(&file))
            .await
            .map_err(|e| StorageError(format!("file task: {e}")))?
            .map_err(StorageError::from)
    }
}

#[async_trait]
impl Upload for LocalUpload {
    async fn put_part(&self, part: Part) -> Result<(), StorageError> {
        use std::os::unix::fs::FileExt;
        self.on_file(move |f| f.write_all_at(&part.data, part.offset))
            .await
    }

    async fn complete(&self) -> Result<(), StorageError> {
        self.on_file(std::fs::File::sync_all).await?;
        tokio::fs::rename(&self.partial, &self.path).await?;
        Ok(())
    }

    async fn abort(&self) -> Result<(), StorageError> {
        tokio::fs::remove_file(&self.partial).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Records each part (number, offset, length) and the most parts ever in flight at once;
    /// parts take `delay` and fail from `fail_at` on.
    #[derive(Clone, Default)]
    struct Recorder {
        parts: Arc<Mutex<Vec<(i32, u64, usize)>>>,
        now: Arc<AtomicUsize>,
        most: Arc<AtomicUsize>,
        delay: Duration,
        fail_at: Option<i32>,
        ended: Arc<Mutex<Vec<&'static str>>>,
    }

    impl Recorder {
        fn parts(&self) -> Vec<(i32, u64, usize)> {
            let mut parts = self.parts.lock().unwrap().clone();
            parts.sort();
            parts
        }
    }

    #[async_trait]
    impl Upload for Recorder {
        async fn put_part(&self, part: Part) -> Result<(), StorageError> {
            let now = self.now.fetch_add(1, Ordering::SeqCst) + 1;
            self.most.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(self.delay).await;
            self.now.fetch_sub(1, Ordering::SeqCst);
            if self.fail_at.is_some_and(|n| part.number >= n) {
                return Err(StorageError("part refused".into()));
            }
            let entry = (part.number, part.offset, part.data.len());
            self.parts.lock().unwrap().push(entry);
            Ok(())
        }
        async fn complete(&self) -> Result<(), StorageError> {
            self.ended.lock().unwrap().push("complete");
            Ok(())
        }
        async fn abort(&self) -> Result<(), StorageError> {
            self.ended.lock().unwrap().push("abort");
            Ok(())
        }
    }

    #[tokio::test]
    async fn parts_are_full_but_the_last() {
        let rec = Recorder::default();
        let mut w = PartWriter::new(Box::new(rec.clone()), 10, 2);
        for chunk in [&[0u8; 7][..], &[0; 7], &[0; 9], &[0; 1]] {
            w.write(chunk).await.unwrap();
        }
        assert_eq!(w.written(), 24);
        w.finish().await.unwrap();
        assert_eq!(rec.parts(), vec![(1, 0, 10), (2, 10, 10), (3, 20, 4)]);
        assert_eq!(*rec.ended.lock().unwrap(), ["complete"]);
    }

    #[tokio::test]
    async fn a_reader_fills_parts_like_writes_do() {
        let rec = Recorder::default();
        let mut w = PartWriter::new(Box::new(rec.clone()), 10, 2);
        w.write(&[0u8; 3]).await.unwrap();
        let source: Vec<u8> = (0..25).collect();
        w.write_from(std::io::Cursor::new(source), 25)
            .await
            .unwrap();
        assert_eq!(w.written(), 28);
        w.finish().await.unwrap();
        assert_eq!(rec.parts(), vec![(1, 0, 10), (2, 10, 10), (3, 20, 8)]);

        let mut w = PartWriter::new(Box::new(Recorder::default()), 10, 2);
        let short = std::io::Cursor::new(vec![0u8; 4]);
        let err = w.write_from(short, 12).await.unwrap_err();
        assert_eq!(err.to_string(), "storage: the source ended 8 bytes early");
    }

    #[tokio::test]
    async fn an_empty_object_is_one_empty_part() {
        let rec = Recorder::default();
        PartWriter::new(Box::new(rec.clone()), 10, 2)
            .finish()
            .await
            .unwrap();
        assert_eq!(rec.parts(), vec![(1, 0, 0)]);
    }

    #[tokio::test]
    async fn parts_go_up_in_parallel_up_to_the_bound() {
        let rec = Recorder {
            delay: Duration::from_millis(20),
            ..Recorder::default()
        };
        let mut w = PartWriter::new(Box::new(rec.clone()), 10, 3);
        w.write(&[1u8; 95]).await.unwrap();
        w.finish().await.unwrap();
        assert_eq!(rec.most.load(Ordering::SeqCst), 3);
        let parts = rec.parts();
        assert_eq!(parts.len(), 10);
        assert_eq!(parts[9], (10, 90, 5));
    }

    #[tokio::test]
    async fn a_failed_part_surfaces_and_the_upload_is_aborted() {
        let rec = Recorder {
            fail_at: Some(2),
            ..Recorder::default()
        };
        let mut w = PartWriter::new(Box::new(rec.clone()), 10, 1);
        w.write(&[0u8; 25]).await.unwrap();
        let err = w.finish().await.unwrap_err();
        assert_eq!(err.to_string(), "storage: part refused");
        assert_eq!(*rec.ended.lock().unwrap(), ["abort"]);
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
        // Parts land at their offsets whatever order they finish in.
        let up = s.create_upload("me/1/x.zip").await.unwrap();
        for (number, offset, data) in [(2, 3, &b"def"[..]), (1, 0, b"abc"), (3, 6, b"g")] {
            let data = Bytes::from_static(data);
            let part = Part {
                number,
                offset,
                data,
            };
            up.put_part(part).await.unwrap();
        }
        up.complete().await.unwrap();
        assert_eq!(
            std::fs::read(dir.path().join("me/1/x.zip")).unwrap(),
            b"abcdefg"
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
