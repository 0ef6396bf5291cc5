//! The object API of `S3Storage` (put_file, head, open, delete_prefix, PartWriter::copy_from)
//! against the suite's real S3 server (s3s + s3s-fs, SigV4 checked), built the way the download
//! Lambda builds it.

mod support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine;
use support::s3::S3Server;
use tokio::io::AsyncReadExt;
use xomcloud_common::storage::{ObjectMeta, PartWriter, S3Storage, Storage, MIN_PART_SIZE};

/// An SdkConfig from the server's environment, as `aws_config()` reads it in the Lambda; a
/// custom endpoint means path-style, as in `crates/download-tracks/src/main.rs`.
async fn sdk(s3: &S3Server) -> aws_config::SdkConfig {
    use aws_sdk_s3::config::{Credentials, Region};
    let env: HashMap<String, String> = s3.env().into_iter().collect();
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(&env["AWS_ENDPOINT_URL_S3"])
        .region(Region::new(env["AWS_REGION"].clone()))
        .credentials_provider(Credentials::new(
            &env["AWS_ACCESS_KEY_ID"],
            &env["AWS_SECRET_ACCESS_KEY"],
            None,
            None,
            "test",
        ))
        .load()
        .await
}

async fn storage(s3: &S3Server) -> S3Storage {
    S3Storage::new(&sdk(s3).await, support::s3::BUCKET, true)
}

/// `len` bytes that do not repeat with any part size, written to `dir/name`, and their metadata.
fn track(dir: &Path, name: &str, len: usize, seed: u32) -> (PathBuf, Vec<u8>, ObjectMeta) {
    let mut state = seed.wrapping_mul(2_654_435_761).max(1);
    let data: Vec<u8> = (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            state as u8
        })
        .collect();
    let path = dir.join(name);
    std::fs::write(&path, &data).unwrap();
    let meta = ObjectMeta {
        size: len as u64,
        crc32: crc32fast::hash(&data),
    };
    (path, data, meta)
}

async fn read_all(storage: &S3Storage, key: &str) -> Vec<u8> {
    let mut bytes = Vec::new();
    let mut reader = storage.open(key).await.unwrap();
    reader.read_to_end(&mut bytes).await.unwrap();
    bytes
}

#[tokio::test(flavor = "multi_thread")]
async fn stored_files_read_back_and_delete_by_prefix() {
    let s3 = S3Server::start().await;
    let storage = storage(&s3).await;
    let work = tempfile::tempdir().unwrap();
    let (big, big_data, big_meta) = track(work.path(), "big", 3 * 1024 * 1024 + 11, 1);
    let (small, small_data, small_meta) = track(work.path(), "small", 1000, 2);

    storage
        .put_file("alice/job1/tracks/0.mp3", &big, big_meta)
        .await
        .unwrap();
    for key in [
        "alice/job1/tracks/1.mp3",
        "alice/job10/tracks/0.mp3",
        "bob/job1/tracks/0.mp3",
    ] {
        storage.put_file(key, &small, small_meta).await.unwrap();
    }

    assert_eq!(
        storage.head("alice/job1/tracks/0.mp3").await.unwrap(),
        Some(big_meta)
    );
    assert_eq!(
        storage.head("alice/job1/tracks/1.mp3").await.unwrap(),
        Some(small_meta)
    );
    assert_eq!(storage.head("alice/job1/tracks/9.mp3").await.unwrap(), None);
    assert_eq!(
        read_all(&storage, "alice/job1/tracks/0.mp3").await,
        big_data
    );
    assert_eq!(
        read_all(&storage, "bob/job1/tracks/0.mp3").await,
        small_data
    );
    assert!(storage.open("alice/job1/tracks/9.mp3").await.is_err());

    // On the wire: the metadata headers and the checksum S3 verified and kept.
    let client = aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(&sdk(&s3).await)
            .force_path_style(true)
            .build(),
    );
    let out = client
        .head_object()
        .bucket(support::s3::BUCKET)
        .key("alice/job1/tracks/0.mp3")
        .checksum_mode(aws_sdk_s3::types::ChecksumMode::Enabled)
        .send()
        .await
        .unwrap();
    let metadata = out.metadata().unwrap();
    assert_eq!(metadata["size"], big_meta.size.to_string());
    assert_eq!(metadata["crc32"], format!("{:08x}", big_meta.crc32));
    assert_eq!(out.content_type(), Some("audio/mpeg"));
    let crc32 = base64::engine::general_purpose::STANDARD.encode(big_meta.crc32.to_be_bytes());
    assert_eq!(out.checksum_crc32(), Some(crc32.as_str()));

    storage.delete_prefix("alice/job1/").await.unwrap();
    assert_eq!(
        s3.objects(),
        ["alice/job10/tracks/0.mp3", "bob/job1/tracks/0.mp3"]
    );
    assert_eq!(storage.head("alice/job1/tracks/0.mp3").await.unwrap(), None);
    // Deleting nothing is fine; a prefix must end with '/'.
    storage.delete_prefix("alice/job1/").await.unwrap();
    storage.delete_prefix("nobody/").await.unwrap();
    assert!(storage.delete_prefix("alice/job10").await.is_err());
    assert_eq!(s3.objects().len(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_file_that_does_not_match_its_metadata_is_refused() {
    let s3 = S3Server::start().await;
    let storage = storage(&s3).await;
    let work = tempfile::tempdir().unwrap();
    let (path, _, meta) = track(work.path(), "a", 100_000, 3);

    // A size that is not the file's is refused before anything is sent.
    let short = ObjectMeta {
        size: meta.size + 1,
        ..meta
    };
    let err = storage.put_file("me/j/0.mp3", &path, short).await;
    assert!(err
        .unwrap_err()
        .to_string()
        .contains("100000 bytes, not 100001"));
    assert!(s3.objects().is_empty(), "{:?}", s3.objects());

    // S3 checks the body against the CRC-32 sent with it and refuses it. (s3s-fs keeps the
    // refused body on disk without its metadata, where S3 stores nothing: either way no
    // object with metadata is there.)
    let wrong = ObjectMeta {
        crc32: meta.crc32 ^ 1,
        ..meta
    };
    let err = storage.put_file("me/j/0.mp3", &path, wrong).await;
    let err = err.unwrap_err().to_string();
    assert!(
        err.contains("PutObject") && err.contains("BadDigest"),
        "{err}"
    );
    assert!(!matches!(storage.head("me/j/0.mp3").await, Ok(Some(_))));
}

#[tokio::test(flavor = "multi_thread")]
async fn more_objects_than_one_page_are_all_deleted() {
    let s3 = S3Server::start().await;
    let storage = Arc::new(storage(&s3).await);
    let work = tempfile::tempdir().unwrap();
    let (path, _, meta) = track(work.path(), "a", 10, 4);
    // One page (and one DeleteObjects batch) holds 1000 keys.
    let mut puts = tokio::task::JoinSet::new();
    let keys: Vec<String> = (0..1003).map(|i| format!("me/many/{i:04}.mp3")).collect();
    for chunk in keys.chunks(100) {
        let (storage, path, chunk) = (storage.clone(), path.clone(), chunk.to_vec());
        puts.spawn(async move {
            for key in chunk {
                storage.put_file(&key, &path, meta).await.unwrap();
            }
        });
    }
    puts.join_all().await;
    storage.put_file("me/other.mp3", &path, meta).await.unwrap();
    assert_eq!(s3.objects().len(), 1004);

    storage.delete_prefix("me/many/").await.unwrap();
    assert_eq!(s3.objects(), ["me/other.mp3"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_multipart_object_streams_stored_objects_in() {
    let s3 = S3Server::start().await;
    let storage = storage(&s3).await;
    let work = tempfile::tempdir().unwrap();
    // Across part boundaries: 3 MiB, then 6 MiB + 17 (crossing the first 5 MiB part and
    // ending inside the second), then a small one.
    let sizes = [3 * 1024 * 1024, 6 * 1024 * 1024 + 17, 4321];
    let mut stored = Vec::new();
    for (i, size) in sizes.into_iter().enumerate() {
        let (path, data, meta) = track(work.path(), &i.to_string(), size, 10 + i as u32);
        let key = format!("alice/job2/tracks/{i}.mp3");
        storage.put_file(&key, &path, meta).await.unwrap();
        stored.push((key, data));
    }

    // A zip-like object: a header before each stored track, a trailer at the end.
    let upload = storage
        .create_upload("alice/job2/xomcloud-tracks.zip")
        .await
        .unwrap();
    let mut writer = PartWriter::new(upload, MIN_PART_SIZE, 2);
    let mut expected = Vec::new();
    for (key, data) in &stored {
        let header = format!("entry {key}\n");
        writer.write(header.as_bytes()).await.unwrap();
        let meta = storage.head(key).await.unwrap().unwrap();
        let mut reader = storage.open(key).await.unwrap();
        writer.copy_from(&mut *reader, meta.size).await.unwrap();
        expected.extend_from_slice(header.as_bytes());
        expected.extend_from_slice(data);
    }
    writer.write(b"end").await.unwrap();
    expected.extend_from_slice(b"end");
    assert_eq!(writer.written(), expected.len() as u64);
    writer.finish().await.unwrap();

    assert!(s3.pending_uploads().is_empty());
    let assembled = read_all(&storage, "alice/job2/xomcloud-tracks.zip").await;
    assert_eq!(assembled.len(), expected.len());
    assert!(assembled == expected, "the assembled object differs");

    // A stored object shorter than announced fails the copy, and the upload can be aborted.
    let upload = storage.create_upload("alice/job3/x.zip").await.unwrap();
    let mut writer = PartWriter::new(upload, MIN_PART_SIZE, 2);
    let mut reader = storage.open(&stored[2].0).await.unwrap();
    let err = writer.copy_from(&mut *reader, 5000).await.unwrap_err();
    assert_eq!(err.to_string(), "storage: the source ended 679 bytes early");
    writer.abort().await.unwrap();
    assert!(s3.pending_uploads().is_empty());
    assert!(!s3.objects().contains(&"alice/job3/x.zip".to_owned()));
}
