//! A streaming ZIP writer for STORED entries: each entry's header is written with its CRC and
//! size known up front (the file is on disk), so no seeking and no data descriptors are needed,
//! and the archive can go straight into a multipart upload. ZIP64 when sizes or counts require.

use std::path::PathBuf;

use xomcloud_common::storage::{PartWriter, StorageError};

const LOCAL_HEADER: u32 = 0x0403_4b50;
const CENTRAL_HEADER: u32 = 0x0201_4b50;
const END_OF_CENTRAL_DIR: u32 = 0x0605_4b50;
const ZIP64_END_OF_CENTRAL_DIR: u32 = 0x0606_4b50;
const ZIP64_LOCATOR: u32 = 0x0706_4b50;
const ZIP64_EXTRA: u16 = 0x0001;
/// General purpose flag bit 11: names are UTF-8.
const UTF8_NAMES: u16 = 1 << 11;
const VERSION_DEFAULT: u16 = 20;
const VERSION_ZIP64: u16 = 45;
/// "Made by" Unix, so extractors apply the permissions below.
const MADE_BY_UNIX: u16 = 3 << 8;
/// Regular file, rw-r--r--.
const EXTERNAL_ATTRS: u32 = 0o100644 << 16;
const U32_MAX: u64 = 0xFFFF_FFFF;
const U16_MAX: u64 = 0xFFFF;
const CHUNK: usize = 256 * 1024;

struct Entry {
    name: String,
    crc: u32,
    size: u64,
    offset: u64,
}

/// The archive's bookkeeping; the bytes themselves go wherever the caller sends them.
pub struct ZipStream {
    offset: u64,
    entries: Vec<Entry>,
    dos_time: u16,
    dos_date: u16,
}

fn put16(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_le_bytes());
}
fn put32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}
fn put64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}
fn clamp32(v: u64) -> u32 {
    v.min(U32_MAX) as u32
}

impl Default for ZipStream {
    fn default() -> Self {
        Self::new(time::OffsetDateTime::now_utc())
    }
}

impl ZipStream {
    /// Every entry gets `modified` as its timestamp (DOS format, 2 s resolution).
    pub fn new(modified: time::OffsetDateTime) -> Self {
        let year = modified.year().clamp(1980, 2107) as u16;
        Self {
            offset: 0,
            entries: Vec::new(),
            dos_time: (u16::from(modified.hour()) << 11)
                | (u16::from(modified.minute()) << 5)
                | (u16::from(modified.second()) / 2),
            dos_date: ((year - 1980) << 9)
                | (u16::from(u8::from(modified.month())) << 5)
                | u16::from(modified.day()),
        }
    }

    /// Bytes written so far.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The local header of a STORED entry; the caller writes exactly `size` bytes after it.
    pub fn begin_entry(&mut self, name: &str, size: u64, crc: u32) -> Vec<u8> {
        let zip64 = size >= U32_MAX;
        let mut h = Vec::with_capacity(30 + name.len() + 20);
        put32(&mut h, LOCAL_HEADER);
        put16(
            &mut h,
            if zip64 {
                VERSION_ZIP64
            } else {
                VERSION_DEFAULT
            },
        );
        put16(&mut h, UTF8_NAMES);
        put16(&mut h, 0); // stored: MP3 is already compressed
        put16(&mut h, self.dos_time);
        put16(&mut h, self.dos_date);
        put32(&mut h, crc);
        put32(&mut h, if zip64 { u32::MAX } else { size as u32 });
        put32(&mut h, if zip64 { u32::MAX } else { size as u32 });
        put16(&mut h, name.len() as u16);
        put16(&mut h, if zip64 { 20 } else { 0 });
        h.extend_from_slice(name.as_bytes());
        if zip64 {
            put16(&mut h, ZIP64_EXTRA);
            put16(&mut h, 16);
            put64(&mut h, size);
            put64(&mut h, size);
        }
        self.entries.push(Entry {
            name: name.to_owned(),
            crc,
            size,
            offset: self.offset,
        });
        self.offset += h.len() as u64 + size;
        h
    }

    /// The central directory and end records.
    pub fn finish(self) -> Vec<u8> {
        let mut out = Vec::new();
        let cd_start = self.offset;
        for e in &self.entries {
            let big_size = e.size >= U32_MAX;
            let big_offset = e.offset >= U32_MAX;
            let mut extra = Vec::new();
            if big_size {
                put64(&mut extra, e.size);
                put64(&mut extra, e.size);
            }
            if big_offset {
                put64(&mut extra, e.offset);
            }
            let zip64 = !extra.is_empty();
            let version = if zip64 {
                VERSION_ZIP64
            } else {
                VERSION_DEFAULT
            };
            put32(&mut out, CENTRAL_HEADER);
            put16(&mut out, MADE_BY_UNIX | version);
            put16(&mut out, version);
            put16(&mut out, UTF8_NAMES);
            put16(&mut out, 0);
            put16(&mut out, self.dos_time);
            put16(&mut out, self.dos_date);
            put32(&mut out, e.crc);
            put32(&mut out, clamp32(e.size));
            put32(&mut out, clamp32(e.size));
            put16(&mut out, e.name.len() as u16);
            put16(&mut out, if zip64 { extra.len() as u16 + 4 } else { 0 });
            put16(&mut out, 0); // comment
            put16(&mut out, 0); // disk
            put16(&mut out, 0); // internal attributes
            put32(&mut out, EXTERNAL_ATTRS);
            put32(&mut out, clamp32(e.offset));
            out.extend_from_slice(e.name.as_bytes());
            if zip64 {
                put16(&mut out, ZIP64_EXTRA);
                put16(&mut out, extra.len() as u16);
                out.extend_from_slice(&extra);
            }
        }
        let cd_size = out.len() as u64;
        let count = self.entries.len() as u64;
        if count >= U16_MAX || cd_size >= U32_MAX || cd_start >= U32_MAX {
            let record_at = cd_start + cd_size;
            put32(&mut out, ZIP64_END_OF_CENTRAL_DIR);
            put64(&mut out, 44);
            put16(&mut out, MADE_BY_UNIX | VERSION_ZIP64);
            put16(&mut out, VERSION_ZIP64);
            put32(&mut out, 0);
            put32(&mut out, 0);
            put64(&mut out, count);
            put64(&mut out, count);
            put64(&mut out, cd_size);
            put64(&mut out, cd_start);
            put32(&mut out, ZIP64_LOCATOR);
            put32(&mut out, 0);
            put64(&mut out, record_at);
            put32(&mut out, 1);
        }
        put32(&mut out, END_OF_CENTRAL_DIR);
        put16(&mut out, 0);
        put16(&mut out, 0);
        put16(&mut out, count.min(U16_MAX) as u16);
        put16(&mut out, count.min(U16_MAX) as u16);
        put32(&mut out, clamp32(cd_size));
        put32(&mut out, clamp32(cd_start));
        put16(&mut out, 0);
        out
    }
}

/// A finished file, open and rewound, with its CRC-32 and length. Made where the file was
/// fetched, so tracks finishing together checksum in parallel and appending them is one read
/// each from the same open file.
#[derive(Debug)]
pub struct Checked {
    pub file: std::fs::File,
    pub crc: u32,
    pub size: u64,
}

impl Checked {
    /// One blocking task reading the file in chunks.
    pub async fn file(path: PathBuf) -> std::io::Result<Self> {
        tokio::task::spawn_blocking(move || {
            use std::io::{Read, Seek};
            let mut file = std::fs::File::open(path)?;
            let mut hasher = crc32fast::Hasher::new();
            let mut buf = vec![0u8; CHUNK];
            let mut size = 0u64;
            loop {
                let n = file.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
                size += n as u64;
            }
            file.rewind()?;
            Ok(Self {
                file,
                crc: hasher.finalize(),
                size,
            })
        })
        .await
        .map_err(std::io::Error::other)?
    }
}

/// Appends a checked file as a STORED entry, its bytes read straight into the upload's part
/// buffer.
pub async fn append_file(
    zip: &mut ZipStream,
    sink: &mut PartWriter,
    name: &str,
    file: Checked,
) -> Result<(), StorageError> {
    sink.write(&zip.begin_entry(name, file.size, file.crc))
        .await?;
    sink.write_from(file.file, file.size).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Cursor, Read};

    fn archive(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut zip = ZipStream::default();
        let mut out = Vec::new();
        for (name, data) in entries {
            out.extend(zip.begin_entry(name, data.len() as u64, crc32fast::hash(data)));
            out.extend_from_slice(data);
        }
        assert_eq!(zip.offset(), out.len() as u64);
        out.extend(zip.finish());
        out
    }

    #[test]
    fn readers_see_names_bytes_and_stored_method() {
        let bytes = archive(&[
            ("Artist - Title.mp3", b"ID3 fake mp3"),
            ("日本語 - 歌.mp3", b""),
            ("x.mp3", &[7u8; 70_000]),
        ]);
        let mut z = zip::ZipArchive::new(Cursor::new(bytes)).unwrap();
        assert_eq!(z.len(), 3);
        let expected: [(&str, Vec<u8>); 3] = [
            ("Artist - Title.mp3", b"ID3 fake mp3".to_vec()),
            ("日本語 - 歌.mp3", Vec::new()),
            ("x.mp3", vec![7u8; 70_000]),
        ];
        for (i, (name, data)) in expected.iter().enumerate() {
            let mut f = z.by_index(i).unwrap();
            assert_eq!(f.name(), *name);
            assert_eq!(f.compression(), zip::CompressionMethod::Stored);
            let mut got = Vec::new();
            f.read_to_end(&mut got).unwrap();
            assert_eq!(&got, data);
        }
    }

    #[test]
    fn empty_archive_is_valid() {
        let z = zip::ZipArchive::new(Cursor::new(archive(&[]))).unwrap();
        assert_eq!(z.len(), 0);
    }

    #[test]
    fn more_than_65535_entries_use_zip64() {
        let mut zip = ZipStream::default();
        let mut out = Vec::new();
        let n = 65_540;
        for i in 0..n {
            out.extend(zip.begin_entry(&format!("{i}.mp3"), 1, crc32fast::hash(b"x")));
            out.push(b'x');
        }
        out.extend(zip.finish());
        let z = zip::ZipArchive::new(Cursor::new(out)).unwrap();
        assert_eq!(z.len(), n);
    }

    #[test]
    fn huge_entries_get_zip64_extra_fields() {
        let mut zip = ZipStream::default();
        let size = 5 * 1024 * 1024 * 1024u64;
        let h = zip.begin_entry("big.mp3", size, 1);
        assert_eq!(u16::from_le_bytes([h[4], h[5]]), VERSION_ZIP64);
        assert_eq!(&h[18..26], &[0xFF; 8]);
        assert_eq!(u16::from_le_bytes([h[28], h[29]]), 20);
        let extra = &h[30 + "big.mp3".len()..];
        assert_eq!(u16::from_le_bytes([extra[0], extra[1]]), ZIP64_EXTRA);
        assert_eq!(u64::from_le_bytes(extra[4..12].try_into().unwrap()), size);
        let _ = zip.begin_entry("after.mp3", 1, 1);
        let tail = zip.finish();
        // The second entry's offset is past 4 GiB, so the directory needs the ZIP64 records.
        let record = ZIP64_END_OF_CENTRAL_DIR.to_le_bytes();
        assert!(tail.windows(4).any(|w| w == record));
    }

    #[test]
    fn dos_timestamp() {
        let t = time::macros::datetime!(2026-11-26 17:42:31 UTC);
        let zip = ZipStream::new(t);
        assert_eq!(zip.dos_date, ((2026 - 1980) << 9) | (11 << 5) | 26);
        assert_eq!(zip.dos_time, (17 << 11) | (42 << 5) | 15);
    }

    #[tokio::test]
    async fn checked_file_has_the_crc_and_length_of_all_its_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("track.mp3");
        // Three chunks and a bit: the CRC runs across chunk boundaries.
        let data: Vec<u8> = (0..3 * CHUNK + 17).map(|i| (i * 31 % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let mut checked = Checked::file(path.clone()).await.unwrap();
        assert_eq!(checked.crc, crc32fast::hash(&data));
        assert_eq!(checked.size, data.len() as u64);
        // The file is kept open and rewound: appending reads it again from the start.
        let mut again = Vec::new();
        std::io::Read::read_to_end(&mut checked.file, &mut again).unwrap();
        assert_eq!(again, data);

        let missing = Checked::file(dir.path().join("gone.mp3"))
            .await
            .unwrap_err();
        assert_eq!(missing.kind(), std::io::ErrorKind::NotFound);
    }
}
