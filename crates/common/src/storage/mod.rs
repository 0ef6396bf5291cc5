//! Where objects go: finished zips (multipart upload + presigned GET) and a job's stored tracks
//! (whole files with their size and CRC-32), in S3 (`s3.rs`) or a local directory with signed
//! links (`local.rs`). Chosen once at start-up; the pipeline only sees the `Storage` trait.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::task::JoinSet;

mod local;
mod s3;

pub use local::LocalStorage;
pub use s3::S3Storage;

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
    /// As `presign_get`, the answer naming the file `name` ([`attachment_named`]) with the
    /// key's content type (S3: the `response-content-disposition`/`-type` overrides).
    async fn presign_named(
        &self,
        key: &str,
        expires_in: Duration,
        name: &str,
    ) -> Result<String, StorageError>;
    /// Stores the local file `path` whole as `key`, with `meta` as metadata; all or nothing.
    /// A file whose size or CRC-32 is not `meta`'s is refused and nothing is stored.
    async fn put_file(&self, key: &str, path: &Path, meta: ObjectMeta) -> Result<(), StorageError>;
    /// The metadata of `key`; `None` when there is no such object (an object without
    /// `put_file`'s metadata is an error).
    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>, StorageError>;
    /// The object's bytes as a stream.
    async fn open(&self, key: &str) -> Result<Box<dyn AsyncRead + Send + Unpin>, StorageError>;
    /// Deletes every object whose key starts with `prefix`, which must end with '/'. Deleting
    /// nothing is Ok.
    async fn delete_prefix(&self, prefix: &str) -> Result<(), StorageError>;
    /// Appends the object's `len` bytes to `sink` (a job's zip). Streams what `open` gives;
    /// an adapter with a faster way (a local file read on a blocking thread straight into the
    /// part buffer) overrides it.
    async fn copy_into(
        &self,
        key: &str,
        sink: &mut PartWriter,
        len: u64,
    ) -> Result<(), StorageError> {
        let mut reader = self.open(key).await?;
        sink.copy_from(&mut reader, len).await
    }
}

/// The size and CRC-32 of a stored track object, kept as object metadata.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ObjectMeta {
    pub size: u64,
    pub crc32: u32,
}

impl ObjectMeta {
    /// The CRC-32 as stored: 8 lowercase hex digits.
    fn crc32_hex(&self) -> String {
        format!("{:08x}", self.crc32)
    }

    /// Reads back what `crc32_hex` wrote (exactly 8 hex digits).
    fn parse_crc32(hex: &str) -> Option<u32> {
        let digits = hex.len() == 8 && hex.bytes().all(|b| b.is_ascii_hexdigit());
        digits.then(|| u32::from_str_radix(hex, 16).ok()).flatten()
    }
}

/// `prefix` without its trailing '/', refusing what `delete_prefix` must never get: a prefix
/// not ending with '/', and an empty one (which would mean everything).
fn prefix_dir(prefix: &str) -> Result<&str, StorageError> {
    match prefix.strip_suffix('/') {
        Some(dir) if !dir.is_empty() && !dir.starts_with('/') => Ok(dir),
        _ => Err(StorageError(format!("invalid prefix {prefix:?}"))),
    }
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

pub fn content_type(key: &str) -> &'static str {
    if key.ends_with(".zip") {
        "application/zip"
    } else if key.ends_with(".mp3") {
        "audio/mpeg"
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

/// `attachment` naming the file `name` in any script: an ASCII `filename` for old clients and
/// the exact name as RFC 5987 UTF-8 `filename*`.
pub fn attachment_named(name: &str) -> String {
    let ascii: String = name
        .chars()
        .map(|c| match c {
            ' ' => ' ',
            c if c.is_ascii_graphic() && c != '"' && c != '\\' => c,
            _ => '_',
        })
        .collect();
    let mut encoded = String::with_capacity(name.len() * 3);
    for b in name.bytes() {
        // RFC 5987 attr-char: these go as they are, every other byte percent-encoded.
        if b.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&b) {
            encoded.push(b as char);
        } else {
            encoded.push_str(&format!("%{b:02X}"));
        }
    }
    format!("attachment; filename=\"{ascii}\"; filename*=UTF-8''{encoded}")
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

    pub async fn write(&mut self, data: &[u8]) -> Result<(), StorageError> {
        self.fill(&mut Slice(data), data.len() as u64).await
    }

    /// Appends exactly `len` bytes read from `source`, on a blocking thread, straight into the
    /// part buffer: one read per part, no intermediate copy.
    pub async fn write_from<R: std::io::Read + Send + 'static>(
        &mut self,
        source: R,
        len: u64,
    ) -> Result<(), StorageError> {
        self.fill(&mut Blocking(Some(source)), len).await
    }

    /// Appends exactly `len` bytes read from `reader` straight into the part buffer, as
    /// `write_from` does for a blocking reader.
    pub async fn copy_from(
        &mut self,
        reader: &mut (dyn AsyncRead + Send + Unpin),
        len: u64,
    ) -> Result<(), StorageError> {
        self.fill(&mut Async(reader), len).await
    }

    /// Moves exactly `len` bytes from `source` into the part buffer, sending each part as it
    /// fills; an error if the source ends early.
    async fn fill(&mut self, source: &mut impl Source, len: u64) -> Result<(), StorageError> {
        let mut left = len;
        while left > 0 {
            let take = ((self.part_size - self.buffer.len()) as u64).min(left);
            let read = source.read_into(&mut self.buffer, take).await?;
            self.written += read;
            if read < take {
                return Err(StorageError(format!(
                    "the source ended {} bytes early",
                    left - read
                )));
            }
            left -= take;
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

/// Where `PartWriter::fill` gets bytes: `read_into` appends up to `take` bytes to `buffer`
/// (fewer only at the source's end) and says how many.
trait Source: Send {
    fn read_into(
        &mut self,
        buffer: &mut Vec<u8>,
        take: u64,
    ) -> impl Future<Output = std::io::Result<u64>> + Send;
}

struct Slice<'a>(&'a [u8]);

impl Source for Slice<'_> {
    async fn read_into(&mut self, buffer: &mut Vec<u8>, take: u64) -> std::io::Result<u64> {
        let (head, rest) = self.0.split_at((take as usize).min(self.0.len()));
        buffer.extend_from_slice(head);
        self.0 = rest;
        Ok(head.len() as u64)
    }
}

/// A blocking reader, read on a blocking thread: it and the buffer travel there and back.
struct Blocking<R>(Option<R>);

impl<R: std::io::Read + Send + 'static> Source for Blocking<R> {
    async fn read_into(&mut self, buffer: &mut Vec<u8>, take: u64) -> std::io::Result<u64> {
        let mut reader = self.0.take().ok_or_else(|| {
            std::io::Error::other("the reader was lost by an earlier failed read")
        })?;
        let mut owned = std::mem::take(buffer);
        let (reader, owned, read) = tokio::task::spawn_blocking(move || {
            use std::io::Read;
            let read = (&mut reader).take(take).read_to_end(&mut owned);
            (reader, owned, read)
        })
        .await
        .map_err(|e| std::io::Error::other(format!("read task: {e}")))?;
        *buffer = owned;
        self.0 = Some(reader);
        Ok(read? as u64)
    }
}

struct Async<'a>(&'a mut (dyn AsyncRead + Send + Unpin));

impl Source for Async<'_> {
    async fn read_into(&mut self, buffer: &mut Vec<u8>, take: u64) -> std::io::Result<u64> {
        // tokio's read_to_end probes with a small stack buffer when the vector is full, so a
        // part buffer filled to its capacity is not reallocated.
        let read = (&mut *self.0).take(take).read_to_end(buffer).await?;
        Ok(read as u64)
    }
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;

    /// Records each part (number, offset, length, bytes) and the most parts ever in flight at
    /// once; parts take `delay` and fail from `fail_at` on.
    #[derive(Clone, Default)]
    struct Recorder {
        parts: Arc<Mutex<Vec<(i32, u64, usize)>>>,
        data: Arc<Mutex<Vec<(u64, Bytes)>>>,
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

        /// The object the parts make up.
        fn object(&self) -> Vec<u8> {
            let mut data = self.data.lock().unwrap().clone();
            data.sort_by_key(|(offset, _)| *offset);
            data.iter().flat_map(|(_, bytes)| bytes.to_vec()).collect()
        }
    }

    /// An async reader handing out at most `chunk` bytes per read, like a network body.
    struct Trickle {
        data: Vec<u8>,
        at: usize,
        chunk: usize,
    }

    impl AsyncRead for Trickle {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            let n = self
                .chunk
                .min(buf.remaining())
                .min(self.data.len() - self.at);
            buf.put_slice(&self.data[self.at..self.at + n]);
            self.at += n;
            std::task::Poll::Ready(Ok(()))
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
            self.data.lock().unwrap().push((part.offset, part.data));
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
    async fn an_async_reader_fills_parts_across_boundaries() {
        let rec = Recorder::default();
        let mut w = PartWriter::new(Box::new(rec.clone()), 64, 1);
        w.write(b"head!").await.unwrap();
        let first: Vec<u8> = (0..200u8).collect();
        let second: Vec<u8> = (0..70u8).rev().collect();
        for (data, chunk) in [(&first, 7), (&second, 64)] {
            let mut reader = Trickle {
                data: data.clone(),
                at: 0,
                chunk,
            };
            w.copy_from(&mut reader, data.len() as u64).await.unwrap();
            // Filling a part to the brim does not grow its buffer: memory stays in parts.
            assert_eq!(w.buffer.capacity(), 64);
        }
        assert_eq!(w.written(), 275);
        w.finish().await.unwrap();
        let parts = vec![
            (1, 0, 64),
            (2, 64, 64),
            (3, 128, 64),
            (4, 192, 64),
            (5, 256, 19),
        ];
        assert_eq!(rec.parts(), parts);
        assert_eq!(rec.object(), [&b"head!"[..], &first, &second].concat());
    }

    #[tokio::test]
    async fn an_async_reader_ending_early_is_an_error() {
        let rec = Recorder::default();
        let mut w = PartWriter::new(Box::new(rec.clone()), 16, 1);
        let mut short = Trickle {
            data: vec![7; 40],
            at: 0,
            chunk: 5,
        };
        let err = w.copy_from(&mut short, 100).await.unwrap_err();
        assert_eq!(err.to_string(), "storage: the source ended 60 bytes early");
        // What did arrive was counted; the writer is then aborted (parts in flight stopped).
        assert_eq!(w.written(), 40);
        w.abort().await.unwrap();
        assert_eq!(*rec.ended.lock().unwrap(), ["abort"]);
    }

    #[test]
    fn crc32_is_eight_hex_digits() {
        let meta = ObjectMeta {
            size: 1,
            crc32: 0x00ab_cdef,
        };
        assert_eq!(meta.crc32_hex(), "00abcdef");
        assert_eq!(ObjectMeta::parse_crc32("00abcdef"), Some(0x00ab_cdef));
        assert_eq!(ObjectMeta::parse_crc32("DEADBEEF"), Some(0xdead_beef));
        for bad in ["abcdef", "+0abcdef", "00abcdefa", "0xabcdef", ""] {
            assert_eq!(ObjectMeta::parse_crc32(bad), None, "{bad}");
        }
    }

    #[test]
    fn prefixes_end_with_a_slash_and_are_not_empty() {
        assert_eq!(prefix_dir("me/job/").unwrap(), "me/job");
        for bad in ["me/job", "/", "", "/me/"] {
            assert!(prefix_dir(bad).is_err(), "{bad}");
        }
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
    fn a_named_attachment_keeps_any_script() {
        assert_eq!(
            attachment_named("Björk - Jóga \"live\".mp3"),
            "attachment; filename=\"Bj_rk - J_ga _live_.mp3\"; \
             filename*=UTF-8''Bj%C3%B6rk%20-%20J%C3%B3ga%20%22live%22.mp3"
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
