//! The shared track cache: every fetched MP3 is stored once, whole, with its size and CRC-32 as
//! object metadata, under `.cache/tracks/{key}.mp3` (a prefix no owner name, `[A-Za-z0-9_-]`,
//! can produce). The key is what the server knows, never a client's `id`: SoundCloud's own track
//! id when resolution read it (`sc{id}`), else a hash of the track's canonical URL (`u{hex}`), so
//! a forged id reaches nothing. A short lease in the job store makes two jobs asking for the same
//! uncached track at once fetch it once.

use url::Url;
use xomcloud_jobs::model::TrackSpec;

/// Where cached tracks live, in S3 and under `serve`'s data directory alike.
pub const CACHE_PREFIX: &str = ".cache/tracks/";

/// The URL as one track has it whatever way it was written: lowercase host with `m.`/`www.`
/// folded, no query, fragment, port or trailing slash. A URL that does not parse is kept as it
/// is (it never passes validation anyway).
pub fn canonical_url(url: &str) -> String {
    let Ok(parsed) = Url::parse(url.trim()) else {
        return url.to_owned();
    };
    let host = parsed.host_str().unwrap_or_default().to_ascii_lowercase();
    let host = host
        .strip_prefix("www.")
        .or_else(|| host.strip_prefix("m."))
        .unwrap_or(&host);
    let path = parsed.path().trim_end_matches('/');
    format!("https://{host}{path}")
}

/// The cache key of a track URL: `u` and 128 bits of the canonical URL's SHA-256, in hex.
pub fn cache_key(url: &str) -> String {
    let canonical = canonical_url(url);
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, canonical.as_bytes());
    let hex: String = digest.as_ref()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("u{hex}")
}

/// The cache key of SoundCloud's track `id` (digits), as resolution read it.
pub fn soundcloud_key(id: &str) -> Option<String> {
    let digits = !id.is_empty() && id.len() <= 20 && id.bytes().all(|b| b.is_ascii_digit());
    digits.then(|| format!("sc{id}"))
}

/// A job track's cache key: the one resolution stored (checked again: `sc` and digits), else
/// its URL's.
pub fn track_key(spec: &TrackSpec) -> String {
    spec.cache_key
        .as_deref()
        .and_then(|key| key.strip_prefix("sc"))
        .and_then(soundcloud_key)
        .unwrap_or_else(|| cache_key(&spec.url))
}

/// The storage key of a cached track.
pub fn cache_object(key: &str) -> String {
    format!("{CACHE_PREFIX}{key}.mp3")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_track_one_key_whatever_the_spelling() {
        let key = cache_key("https://soundcloud.com/forss/flickermood");
        for same in [
            "https://SoundCloud.com/forss/flickermood/",
            "https://m.soundcloud.com/forss/flickermood?in=x#t=1",
            "https://www.soundcloud.com/forss/flickermood",
        ] {
            assert_eq!(cache_key(same), key, "{same}");
        }
        assert_ne!(cache_key("https://soundcloud.com/forss/journeyman"), key);
        // The path's case is the track's: SoundCloud's permalinks are case-sensitive.
        assert_ne!(cache_key("https://soundcloud.com/Forss/flickermood"), key);
        assert_eq!(key.len(), 33);
        assert!(key[1..].bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(cache_object("uab"), ".cache/tracks/uab.mp3");
    }

    #[test]
    fn resolution_keys_by_soundcloud_id_and_nothing_else_does() {
        let spec = |cache_key: Option<&str>| TrackSpec {
            id: "123".into(),
            url: "https://soundcloud.com/forss/flickermood".into(),
            title: "T".into(),
            artist: "A".into(),
            cache_key: cache_key.map(str::to_owned),
        };
        let by_url = cache_key("https://soundcloud.com/forss/flickermood");
        assert_eq!(track_key(&spec(Some("sc293"))), "sc293");
        // The client's id is not a key; neither is anything but `sc` and digits.
        for odd in [
            None,
            Some("123"),
            Some("sc"),
            Some("sc12a"),
            Some("sc../x"),
            Some("u1"),
        ] {
            assert_eq!(track_key(&spec(odd)), by_url, "{odd:?}");
        }
        assert_eq!(soundcloud_key("293"), Some("sc293".into()));
        assert_eq!(soundcloud_key(""), None);
    }
}
