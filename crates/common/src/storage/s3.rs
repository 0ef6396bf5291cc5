//! S3: zips written as multipart uploads behind presigned links; track objects put whole, with
//! their size and CRC-32 as user metadata.

use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{Delete, ObjectIdentifier};
use base64::Engine;
use tokio::io::AsyncRead;

use super::{
    attachment_named, content_disposition, content_type, prefix_dir, ObjectMeta, Part, Storage,
    StorageError, Upload,
};

/// The user metadata `put_file` writes (`x-amz-meta-size`, `x-amz-meta-crc32`).
const META_SIZE: &str = "size";
const META_CRC32: &str = "crc32";

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

    /// A presigned GetObject; with `name`, the answer is an attachment of that name.
    async fn presign(
        &self,
        key: &str,
        expires_in: Duration,
        name: Option<&str>,
    ) -> Result<String, StorageError> {
        let config = aws_sdk_s3::presigning::PresigningConfig::expires_in(expires_in)
            .map_err(|e| StorageError(e.to_string()))?;
        let mut request = self.client.get_object().bucket(&self.bucket).key(key);
        if let Some(name) = name {
            request = request
                .response_content_disposition(attachment_named(name))
                .response_content_type(content_type(key));
        }
        let request = request
            .presigned(config)
            .await
            .map_err(|e| StorageError::from_sdk("presign GetObject", e))?;
        Ok(request.uri().to_owned())
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
        self.presign(key, expires_in, None).await
    }

    async fn presign_named(
        &self,
        key: &str,
        expires_in: Duration,
        name: &str,
    ) -> Result<String, StorageError> {
        self.presign(key, expires_in, Some(name)).await
    }

    async fn put_file(&self, key: &str, path: &Path, meta: ObjectMeta) -> Result<(), StorageError> {
        let size = tokio::fs::metadata(path).await?.len();
        if size != meta.size {
            return Err(StorageError(format!(
                "{} has {size} bytes, not {}",
                path.display(),
                meta.size
            )));
        }
        let body = ByteStream::from_path(path)
            .await
            .map_err(|e| StorageError(format!("reading {}: {e}", path.display())))?;
        let crc32 = base64::engine::general_purpose::STANDARD.encode(meta.crc32.to_be_bytes());
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_type(content_type(key))
            .metadata(META_SIZE, meta.size.to_string())
            .metadata(META_CRC32, meta.crc32_hex())
            // S3 refuses the body unless its CRC-32 is `meta`'s, so the object and its metadata
            // agree; as for parts, that makes a SHA-256 of the payload redundant.
            .checksum_crc32(crc32)
            .body(body)
            .customize()
            .disable_payload_signing()
            .send()
            .await
            .map_err(|e| StorageError::from_sdk("PutObject", e))?;
        Ok(())
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>, StorageError> {
        let out = match self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(out) => out,
            Err(e) if e.as_service_error().is_some_and(|e| e.is_not_found()) => return Ok(None),
            Err(e) => return Err(StorageError::from_sdk("HeadObject", e)),
        };
        let field = |name: &str| out.metadata().and_then(|m| m.get(name));
        let size = field(META_SIZE).and_then(|s| s.parse::<u64>().ok());
        let crc32 = field(META_CRC32).and_then(|s| ObjectMeta::parse_crc32(s));
        match (size, crc32) {
            (Some(size), Some(crc32)) if out.content_length() == Some(size as i64) => {
                Ok(Some(ObjectMeta { size, crc32 }))
            }
            _ => Err(StorageError(format!(
                "{key} has no valid size/crc32 metadata for its {:?} bytes",
                out.content_length()
            ))),
        }
    }

    async fn open(&self, key: &str) -> Result<Box<dyn AsyncRead + Send + Unpin>, StorageError> {
        let out = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| StorageError::from_sdk("GetObject", e))?;
        Ok(Box::new(out.body.into_async_read()))
    }

    async fn delete_prefix(&self, prefix: &str) -> Result<(), StorageError> {
        prefix_dir(prefix)?;
        let mut token = None;
        loop {
            // A page holds at most 1000 keys, DeleteObjects' own limit: one batch per page.
            let page = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(prefix)
                .max_keys(1000)
                .set_continuation_token(token.take())
                .send()
                .await
                .map_err(|e| StorageError::from_sdk("ListObjectsV2", e))?;
            let objects = page
                .contents()
                .iter()
                .filter_map(|o| o.key())
                .map(|key| ObjectIdentifier::builder().key(key).build())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| StorageError(e.to_string()))?;
            if !objects.is_empty() {
                let count = objects.len();
                let delete = Delete::builder()
                    .set_objects(Some(objects))
                    .quiet(true)
                    .build()
                    .map_err(|e| StorageError(e.to_string()))?;
                let out = self
                    .client
                    .delete_objects()
                    .bucket(&self.bucket)
                    .delete(delete)
                    .send()
                    .await
                    .map_err(|e| StorageError::from_sdk("DeleteObjects", e))?;
                if let Some(failed) = out.errors().first() {
                    return Err(StorageError(format!(
                        "DeleteObjects: {} of {count} keys failed, first {:?}: {}",
                        out.errors().len(),
                        failed.key().unwrap_or_default(),
                        failed
                            .message()
                            .or(failed.code())
                            .unwrap_or("no reason given")
                    )));
                }
                tracing::info!(prefix, objects = count, "objects deleted");
            }
            match page.next_continuation_token {
                Some(next) if page.is_truncated == Some(true) => token = Some(next),
                _ => return Ok(()),
            }
        }
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
            // The completion error is the one returned; a failed abort still leaves parts billed.
            if let Err(abort) = self.abort().await {
                tracing::warn!(error = %abort, key = %self.key, "aborting the upload failed");
            }
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
