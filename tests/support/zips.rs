//! Reading zips the way a user's extractor would: every entry to the end (which checks its CRC).

use std::io::Read;

/// `(name, bytes)` of every entry, in archive order.
pub fn entries(bytes: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(bytes)).expect("a valid zip");
    (0..archive.len())
        .map(|i| {
            let mut file = archive.by_index(i).unwrap();
            let mut data = Vec::new();
            file.read_to_end(&mut data).unwrap();
            (file.name().to_owned(), data)
        })
        .collect()
}

/// `(name, bytes)` of every entry of the zip a link serves (fetched as a browser would; 200
/// expected).
pub async fn entries_at(url: &str) -> Vec<(String, Vec<u8>)> {
    let res = reqwest::get(url).await.unwrap();
    assert_eq!(res.status(), 200, "{url}");
    entries(&res.bytes().await.unwrap())
}

/// The entry names of the zip a link serves.
pub async fn names_at(url: &str) -> Vec<String> {
    entries_at(url)
        .await
        .into_iter()
        .map(|(name, _)| name)
        .collect()
}
