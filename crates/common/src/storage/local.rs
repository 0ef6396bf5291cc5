//! Local disk: objects as files under a root, links to the dev server signed with a key.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::io::AsyncRead;

use super::{prefix_dir, unix_now, ObjectMeta, Part, PartWriter, Storage, StorageError, Upload};
use crate::presign::LinkSigner;

/// The first segment of the shared track cache's keys (`.cache/tracks/…`).
const CACHE_DIR: &str = ".cache";

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

    /// The file behind a key; `None` for anything that could leave the root, and for any
    /// segment starting with '.': the adapter's own files (metadata sidecars, files being
    /// written) are named so, and no key can reach them.
    /// The one exception is a first segment of exactly `.cache` (the shared track cache's
    /// prefix, which no owner name can produce): no sidecar or temporary file is named so.
    pub fn path_of(&self, key: &str) -> Option<PathBuf> {
        let relative = Path::new(key);
        let plain = relative.components().enumerate().all(|(i, c)| match c {
            Component::Normal(name) => {
                !name.as_encoded_bytes().starts_with(b".") || (i == 0 && name == CACHE_DIR)
            }
            _ => false,
        });
        (plain && !key.is_empty()).then(|| self.root.join(relative))
    }

    fn object_path(&self, key: &str) -> Result<PathBuf, StorageError> {
        self.path_of(key)
            .ok_or_else(|| StorageError(format!("invalid key {key:?}")))
    }

    pub fn signer(&self) -> &LinkSigner {
        &self.signer
    }
}

#[async_trait]
impl Storage for LocalStorage {
    async fn create_upload(&self, key: &str) -> Result<Box<dyn Upload>, StorageError> {
        let path = self.object_path(key)?;
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

    async fn presign_named(
        &self,
        key: &str,
        expires_in: Duration,
        name: &str,
    ) -> Result<String, StorageError> {
        let expires = unix_now() + expires_in.as_secs();
        let signature = self.signer.sign_named(key, expires, Some(name));
        let name: String = url::form_urlencoded::byte_serialize(name.as_bytes()).collect();
        Ok(format!(
            "{}/files/{key}?expires={expires}&name={name}&signature={signature}",
            self.base_url
        ))
    }

    async fn put_file(&self, key: &str, path: &Path, meta: ObjectMeta) -> Result<(), StorageError> {
        let target = self.object_path(key)?;
        let source = path.to_owned();
        tokio::task::spawn_blocking(move || put_file(&source, &target, meta))
            .await
            .map_err(|e| StorageError(format!("file task: {e}")))?
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>, StorageError> {
        let path = self.object_path(key)?;
        let size = match tokio::fs::metadata(&path).await {
            Ok(m) if m.is_file() => m.len(),
            Ok(_) => return Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let invalid = |why: String| StorageError(format!("metadata of {key:?}: {why}"));
        let sidecar = tokio::fs::read(sidecar_of(&path))
            .await
            .map_err(|e| invalid(e.to_string()))?;
        let sidecar: Sidecar =
            serde_json::from_slice(&sidecar).map_err(|e| invalid(e.to_string()))?;
        let crc32 = ObjectMeta::parse_crc32(&sidecar.crc32)
            .ok_or_else(|| invalid(format!("bad crc32 {:?}", sidecar.crc32)))?;
        if sidecar.size != size {
            return Err(invalid(format!(
                "says {} bytes, the file has {size}",
                sidecar.size
            )));
        }
        Ok(Some(ObjectMeta { size, crc32 }))
    }

    async fn open(&self, key: &str) -> Result<Box<dyn AsyncRead + Send + Unpin>, StorageError> {
        let path = self.object_path(key)?;
        let missing = || StorageError(format!("no such object {key:?}"));
        let file = match tokio::fs::File::open(&path).await {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(missing()),
            Err(e) => return Err(e.into()),
        };
        if !file.metadata().await?.is_file() {
            return Err(missing());
        }
        Ok(Box::new(file))
    }

    /// One blocking reader straight into the part buffer: no copy through tokio's file buffers
    /// (measured: ~1 s of a 500 MB job's zip, and their allocations grew RSS with the job).
    async fn copy_into(
        &self,
        key: &str,
        sink: &mut PartWriter,
        len: u64,
    ) -> Result<(), StorageError> {
        let path = self.object_path(key)?;
        let file = std::fs::File::open(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => StorageError(format!("no such object {key:?}")),
            _ => e.into(),
        })?;
        sink.write_from(file, len).await
    }

    async fn delete_prefix(&self, prefix: &str) -> Result<(), StorageError> {
        let dir = self.object_path(prefix_dir(prefix)?)?;
        match tokio::fs::symlink_metadata(&dir).await {
            Ok(m) if m.is_dir() => Ok(tokio::fs::remove_dir_all(&dir).await?),
            // A file named like the prefix is no object under it.
            Ok(_) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

/// What `{dir}/.{name}.meta` holds beside the object `{dir}/{name}`.
#[derive(serde::Serialize, serde::Deserialize)]
struct Sidecar {
    size: u64,
    /// 8 hex digits, as in S3's `x-amz-meta-crc32`.
    crc32: String,
}

/// A hidden name beside `path`, `.{name}{suffix}`: one `path_of` never returns.
fn hidden_beside(path: &Path, suffix: &str) -> PathBuf {
    let mut name = OsString::from(".");
    name.push(path.file_name().unwrap_or_default());
    name.push(suffix);
    path.with_file_name(name)
}

fn sidecar_of(path: &Path) -> PathBuf {
    hidden_beside(path, ".meta")
}

/// A hidden temporary name beside `path`, unique in this process.
fn temp_beside(path: &Path) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    hidden_beside(path, &format!(".{}-{n}.tmp", std::process::id()))
}

/// Copies `source` to a temporary name beside `target`, checking its size and CRC-32 against
/// `meta` on the way (as S3 checks the checksum), then renames the sidecar and the object into
/// place, the object last: until that rename there is no object, after it both are there. (A
/// crash in between leaves only a hidden sidecar; replacing an object shows the new metadata
/// beside the old bytes for that moment, which `head` reports when the sizes differ.)
fn put_file(source: &Path, target: &Path, meta: ObjectMeta) -> Result<(), StorageError> {
    if let Some(dir) = target.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let temp = temp_beside(target);
    let sidecar_temp = temp_beside(&sidecar_of(target));
    let result = (|| {
        let mut from = std::fs::File::open(source)?;
        let mut to = std::fs::File::create(&temp)?;
        let (size, crc32) = copy_checksummed(&mut from, &mut to)?;
        if (size, crc32) != (meta.size, meta.crc32) {
            return Err(StorageError(format!(
                "{} has {size} bytes with CRC-32 {crc32:08x}, not {} with {}",
                source.display(),
                meta.size,
                meta.crc32_hex()
            )));
        }
        to.sync_all()?;
        let sidecar = Sidecar {
            size: meta.size,
            crc32: meta.crc32_hex(),
        };
        let sidecar = serde_json::to_vec(&sidecar).map_err(|e| StorageError(e.to_string()))?;
        std::fs::write(&sidecar_temp, sidecar)?;
        std::fs::rename(&sidecar_temp, sidecar_of(target))?;
        std::fs::rename(&temp, target)?;
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temp);
        let _ = std::fs::remove_file(&sidecar_temp);
    }
    result
}

/// Copies `from` to `to`; the bytes copied and their CRC-32.
fn copy_checksummed(from: &mut impl Read, to: &mut impl Write) -> std::io::Result<(u64, u32)> {
    let mut hasher = crc32fast::Hasher::new();
    let mut buffer = vec![0; 64 * 1024];
    let mut size = 0;
    loop {
        let n = match from.read(&mut buffer) {
            Ok(0) => return Ok((size, hasher.finalize())),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buffer[..n]);
        to.write_all(&buffer[..n])?;
        size += n as u64;
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
        let done = async {
            self.on_file(std::fs::File::sync_all).await?;
            tokio::fs::rename(&self.partial, &self.path).await?;
            Ok(())
        }
        .await;
        // As S3's adapter aborts after a failed completion: no `.partial` is left behind.
        if done.is_err() {
            let _ = tokio::fs::remove_file(&self.partial).await;
        }
        done
    }

    async fn abort(&self) -> Result<(), StorageError> {
        tokio::fs::remove_file(&self.partial).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn local_keys_cannot_escape() {
        let s = LocalStorage::new("/data", "http://x", LinkSigner::new(b"k"));
        assert_eq!(s.path_of("a/b.zip"), Some(PathBuf::from("/data/a/b.zip")));
        assert_eq!(
            s.path_of(".cache/tracks/u1.mp3"),
            Some(PathBuf::from("/data/.cache/tracks/u1.mp3"))
        );
        for bad in [
            "../x",
            "/etc/passwd",
            "a/../../x",
            "",
            "./a",
            ".env",
            "a/.b.mp3.meta",
            ".cache/tracks/.u1.mp3.meta",
            "a/.cache/x.mp3",
            ".cached/x",
        ] {
            assert_eq!(s.path_of(bad), None, "{bad}");
        }
    }

    fn storage(root: &Path) -> LocalStorage {
        LocalStorage::new(root, "http://127.0.0.1:3000", LinkSigner::new(b"k"))
    }

    #[tokio::test]
    async fn a_failed_complete_leaves_no_partial_file() {
        let root = tempfile::tempdir().unwrap();
        let s = storage(root.path());
        let upload = s.create_upload("a/b.zip").await.unwrap();
        upload
            .put_part(Part {
                number: 1,
                offset: 0,
                data: Bytes::from_static(b"zip bytes"),
            })
            .await
            .unwrap();
        // A non-empty directory where the object goes: the final rename fails.
        std::fs::create_dir_all(root.path().join("a/b.zip/x")).unwrap();
        assert!(upload.complete().await.is_err());
        let left: Vec<_> = std::fs::read_dir(root.path().join("a"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, ["b.zip"], "only the blocking directory is left");
    }

    /// A file of `len` bytes to store, and its metadata.
    fn track(dir: &Path, name: &str, len: usize) -> (PathBuf, Vec<u8>, ObjectMeta) {
        let data: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
        let path = dir.join(name);
        std::fs::write(&path, &data).unwrap();
        let meta = ObjectMeta {
            size: len as u64,
            crc32: crc32fast::hash(&data),
        };
        (path, data, meta)
    }

    async fn read_all(s: &LocalStorage, key: &str) -> Vec<u8> {
        use tokio::io::AsyncReadExt;
        let mut bytes = Vec::new();
        s.open(key)
            .await
            .unwrap()
            .read_to_end(&mut bytes)
            .await
            .unwrap();
        bytes
    }

    fn names_in(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[tokio::test]
    async fn stored_files_read_back_with_their_metadata() {
        let (root, work) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let s = storage(root.path());
        let (a, a_data, a_meta) = track(work.path(), "a", 200_000);
        let (b, b_data, b_meta) = track(work.path(), "b", 0);
        s.put_file("me/job1/tracks/0.mp3", &a, a_meta)
            .await
            .unwrap();
        s.put_file("me/job1/tracks/1.mp3", &b, b_meta)
            .await
            .unwrap();

        assert_eq!(s.head("me/job1/tracks/0.mp3").await.unwrap(), Some(a_meta));
        assert_eq!(s.head("me/job1/tracks/1.mp3").await.unwrap(), Some(b_meta));
        assert_eq!(read_all(&s, "me/job1/tracks/0.mp3").await, a_data);
        assert_eq!(read_all(&s, "me/job1/tracks/1.mp3").await, b_data);
        // Only the objects and their hidden sidecars: no temporary file is left behind.
        assert_eq!(
            names_in(&root.path().join("me/job1/tracks")),
            [".0.mp3.meta", ".1.mp3.meta", "0.mp3", "1.mp3"]
        );

        // Storing again replaces the object and its metadata.
        s.put_file("me/job1/tracks/0.mp3", &b, b_meta)
            .await
            .unwrap();
        assert_eq!(s.head("me/job1/tracks/0.mp3").await.unwrap(), Some(b_meta));
        assert_eq!(read_all(&s, "me/job1/tracks/0.mp3").await, b_data);
    }

    #[tokio::test]
    async fn missing_objects_are_none_and_cannot_be_opened() {
        let root = tempfile::tempdir().unwrap();
        let s = storage(root.path());
        assert_eq!(s.head("me/job1/tracks/0.mp3").await.unwrap(), None);
        let err = s.open("me/job1/tracks/0.mp3").await.err().unwrap();
        assert_eq!(
            err.to_string(),
            "storage: no such object \"me/job1/tracks/0.mp3\""
        );

        // A directory is no object either.
        std::fs::create_dir_all(root.path().join("me/job1/tracks")).unwrap();
        assert_eq!(s.head("me/job1").await.unwrap(), None);
        assert!(s.open("me/job1").await.is_err());
    }

    #[tokio::test]
    async fn a_file_that_does_not_match_its_metadata_is_not_stored() {
        let (root, work) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let s = storage(root.path());
        let (a, _, meta) = track(work.path(), "a", 1000);
        for wrong in [
            ObjectMeta {
                crc32: meta.crc32 ^ 1,
                ..meta
            },
            ObjectMeta { size: 999, ..meta },
        ] {
            let err = s.put_file("me/j/0.mp3", &a, wrong).await.unwrap_err();
            assert!(err.to_string().contains("not"), "{err}");
        }
        assert_eq!(s.head("me/j/0.mp3").await.unwrap(), None);
        assert!(names_in(&root.path().join("me/j")).is_empty());
        // Neither is a file that is not there.
        let missing = work.path().join("missing");
        assert!(s.put_file("me/j/0.mp3", &missing, meta).await.is_err());
        assert!(names_in(&root.path().join("me/j")).is_empty());
    }

    #[tokio::test]
    async fn an_object_without_metadata_is_an_error_for_head() {
        let root = tempfile::tempdir().unwrap();
        let s = storage(root.path());
        let up = s.create_upload("me/1/x.zip").await.unwrap();
        up.put_part(Part {
            number: 1,
            offset: 0,
            data: Bytes::from_static(b"zip"),
        })
        .await
        .unwrap();
        up.complete().await.unwrap();
        let err = s.head("me/1/x.zip").await.unwrap_err();
        assert!(
            err.to_string()
                .starts_with("storage: metadata of \"me/1/x.zip\""),
            "{err}"
        );
        assert_eq!(read_all(&s, "me/1/x.zip").await, b"zip");
    }

    #[tokio::test]
    async fn delete_prefix_removes_that_prefix_only() {
        let (root, work) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let s = storage(root.path());
        let (a, _, meta) = track(work.path(), "a", 10);
        for key in [
            "me/job1/tracks/0.mp3",
            "me/job1/x.mp3",
            "me/job10/0.mp3",
            "me/job2/0.mp3",
        ] {
            s.put_file(key, &a, meta).await.unwrap();
        }
        s.delete_prefix("me/job1/").await.unwrap();
        for (key, there) in [
            ("me/job1/tracks/0.mp3", false),
            ("me/job1/x.mp3", false),
            ("me/job10/0.mp3", true),
            ("me/job2/0.mp3", true),
        ] {
            assert_eq!(s.head(key).await.unwrap().is_some(), there, "{key}");
        }
        assert!(!root.path().join("me/job1").exists());
        // Deleting nothing is fine, also where a file has the prefix's name.
        s.delete_prefix("me/job1/").await.unwrap();
        s.delete_prefix("me/job2/0.mp3/").await.unwrap();
        assert_eq!(s.head("me/job2/0.mp3").await.unwrap(), Some(meta));
    }

    #[tokio::test]
    async fn keys_that_could_leave_the_root_or_name_a_sidecar_are_refused() {
        let (root, work) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let s = storage(&root.path().join("data"));
        let (a, _, meta) = track(work.path(), "a", 10);
        s.put_file("me/j/0.mp3", &a, meta).await.unwrap();
        for key in [
            "../x.mp3",
            "me/../../x.mp3",
            "/tmp/x.mp3",
            "me/j/.0.mp3.meta",
            "./me",
        ] {
            let invalid = format!("storage: invalid key {key:?}");
            let err = s.put_file(key, &a, meta).await.unwrap_err();
            assert_eq!(err.to_string(), invalid);
            assert_eq!(s.head(key).await.unwrap_err().to_string(), invalid);
            assert_eq!(s.open(key).await.err().unwrap().to_string(), invalid);
        }
        for prefix in ["../", "me/../../", "me/j", "/", "", "me/.j/"] {
            assert!(s.delete_prefix(prefix).await.is_err(), "{prefix}");
        }
        assert_eq!(names_in(root.path()), ["data"]);
        assert_eq!(s.head("me/j/0.mp3").await.unwrap(), Some(meta));
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
}
