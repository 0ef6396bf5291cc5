//! Signed local download links: `/files/{key}?expires={unix}&signature={hex}` (and `&name=…`,
//! the file name the answer gives, signed with the rest) with HMAC-SHA256, so the dev server can
//! hand out links that behave like presigned S3 URLs.

use aws_lc_rs::hmac;

#[derive(Clone)]
pub struct LinkSigner {
    key: hmac::Key,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    #[error("the link has expired")]
    Expired,
    #[error("the link signature is invalid")]
    BadSignature,
}

impl LinkSigner {
    /// Derives the link key from a secret, so links are bound to it (and die when it rotates).
    pub fn new(secret: &[u8]) -> Self {
        let root = hmac::Key::new(hmac::HMAC_SHA256, secret);
        let derived = hmac::sign(&root, b"xomcloud local download links v1");
        Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, derived.as_ref()),
        }
    }

    fn message(key: &str, expires: u64, name: Option<&str>) -> String {
        match name {
            None => format!("GET\n{key}\n{expires}"),
            Some(name) => format!("GET\n{key}\n{expires}\n{name}"),
        }
    }

    pub fn sign(&self, key: &str, expires: u64) -> String {
        self.sign_named(key, expires, None)
    }

    /// A signature that also covers the file name the link's answer gives (`None`: the key's).
    pub fn sign_named(&self, key: &str, expires: u64, name: Option<&str>) -> String {
        hex(hmac::sign(&self.key, Self::message(key, expires, name).as_bytes()).as_ref())
    }

    /// Checks the signature (constant time) before the expiry, so a forged link learns nothing.
    pub fn verify(
        &self,
        key: &str,
        expires: u64,
        signature: &str,
        now: u64,
    ) -> Result<(), LinkError> {
        self.verify_named(key, expires, None, signature, now)
    }

    /// `verify` for a link that names its file.
    pub fn verify_named(
        &self,
        key: &str,
        expires: u64,
        name: Option<&str>,
        signature: &str,
        now: u64,
    ) -> Result<(), LinkError> {
        let tag = unhex(signature).ok_or(LinkError::BadSignature)?;
        hmac::verify(
            &self.key,
            Self::message(key, expires, name).as_bytes(),
            &tag,
        )
        .map_err(|_| LinkError::BadSignature)?;
        if now >= expires {
            return Err(LinkError::Expired);
        }
        Ok(())
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) || !text.is_ascii() {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_and_verify() {
        let signer = LinkSigner::new(b"secret");
        let sig = signer.sign("me/x/xomcloud-tracks.zip", 1000);
        assert_eq!(sig.len(), 64);
        assert_eq!(
            signer.verify("me/x/xomcloud-tracks.zip", 1000, &sig, 999),
            Ok(())
        );
        assert_eq!(
            signer.verify("me/x/xomcloud-tracks.zip", 1000, &sig, 1000),
            Err(LinkError::Expired)
        );
        assert_eq!(
            signer.verify("me/y/xomcloud-tracks.zip", 1000, &sig, 1),
            Err(LinkError::BadSignature)
        );
        assert_eq!(
            signer.verify("me/x/xomcloud-tracks.zip", 2000, &sig, 1),
            Err(LinkError::BadSignature)
        );
        assert_eq!(
            LinkSigner::new(b"other").verify("me/x/xomcloud-tracks.zip", 1000, &sig, 1),
            Err(LinkError::BadSignature)
        );
        assert_eq!(
            signer.verify("k", 1000, "zz", 1),
            Err(LinkError::BadSignature)
        );
        let named = signer.sign_named("k.mp3", 1000, Some("A - B.mp3"));
        assert_eq!(
            signer.verify_named("k.mp3", 1000, Some("A - B.mp3"), &named, 1),
            Ok(())
        );
        for other in [None, Some("A - C.mp3")] {
            assert_eq!(
                signer.verify_named("k.mp3", 1000, other, &named, 1),
                Err(LinkError::BadSignature)
            );
        }
    }
}
