//! Zip entry names: `{Artist} - {Title}.mp3`, safe to extract on any desktop OS and unique
//! within one archive.

use std::collections::HashSet;

use crate::validate::Track;

/// Longest stem (the name without `.mp3`), in characters.
pub const MAX_NAME_CHARS: usize = 150;

/// Characters Windows forbids in file names; `/` and `\` would also be read as directories.
const FORBIDDEN: &[char] = &['<', '>', ':', '"', '/', '\\', '|', '?', '*'];

/// Invisible format characters that can reorder or hide text (e.g. U+202E makes "gpj.exe" read
/// "exe.jpg"); `char::is_control` does not cover them.
const INVISIBLE: &[char] = &[
    '\u{200B}', '\u{200C}', '\u{200D}', '\u{200E}', '\u{200F}', '\u{202A}', '\u{202B}', '\u{202C}',
    '\u{202D}', '\u{202E}', '\u{2060}', '\u{2066}', '\u{2067}', '\u{2068}', '\u{2069}', '\u{FEFF}',
];

/// Names Windows reserves for devices, with any extension.
const RESERVED: &[&str] = &[
    "CON", "PRN", "AUX", "NUL", "COM1", "COM2", "COM3", "COM4", "COM5", "COM6", "COM7", "COM8",
    "COM9", "LPT1", "LPT2", "LPT3", "LPT4", "LPT5", "LPT6", "LPT7", "LPT8", "LPT9",
];

/// `{Artist} - {Title}.mp3` made safe.
pub fn entry_name(artist: &str, title: &str, id: &str) -> String {
    format!("{}.mp3", stem(artist, title, id))
}

/// Names for all tracks in input order, repeated names made unique with " (2)", " (3)" …
pub fn assign_names(tracks: &[Track]) -> Vec<String> {
    // Lowercased names: extractors on macOS and Windows are case-insensitive.
    let mut taken: HashSet<String> = HashSet::with_capacity(tracks.len());
    tracks
        .iter()
        .map(|track| {
            let base = stem(&track.artist, &track.title, &track.id);
            let name = (1..)
                .map(|n| match n {
                    1 => format!("{base}.mp3"),
                    n => {
                        let suffix = format!(" ({n})");
                        let room = MAX_NAME_CHARS - suffix.chars().count();
                        format!("{}{suffix}.mp3", cut(&base, room))
                    }
                })
                .find(|name| !taken.contains(&name.to_lowercase()))
                .expect("an unbounded counter always finds a free name");
            taken.insert(name.to_lowercase());
            name
        })
        .collect()
}

/// The name without `.mp3`: never empty, at most MAX_NAME_CHARS chars, no leading dot.
fn stem(artist: &str, title: &str, id: &str) -> String {
    let artist = clean(artist);
    let title = Some(clean(title))
        .filter(|t| !t.is_empty())
        .or_else(|| {
            Some(clean(id))
                .filter(|id| !id.is_empty())
                .map(|id| format!("track_{id}"))
        })
        .unwrap_or_else(|| "track".to_owned());
    let stem = if artist.is_empty() {
        title
    } else {
        format!("{artist} - {title}")
    };
    // Windows reads "NUL.remix.mp3" as the device too: only the part before the first dot counts.
    let device = stem.split('.').next().unwrap_or_default().trim_end();
    if RESERVED.iter().any(|r| r.eq_ignore_ascii_case(device)) {
        cut(&format!("_{stem}"), MAX_NAME_CHARS)
    } else {
        cut(&stem, MAX_NAME_CHARS)
    }
}

/// Forbidden, control and invisible characters removed, whitespace runs (tabs and newlines
/// included) collapsed to one space, trimmed, leading dots removed.
fn clean(s: &str) -> String {
    // Whitespace controls (tab, newline) separate words, so they survive until the collapse.
    let kept: String = s
        .chars()
        .filter(|&c| !FORBIDDEN.contains(&c) && !INVISIBLE.contains(&c))
        .filter(|&c| c.is_whitespace() || !c.is_control())
        .collect();
    let collapsed = kept.split_whitespace().collect::<Vec<_>>().join(" ");
    // Dots and spaces may alternate (". . .x"), so both go until neither is first.
    collapsed
        .trim_start_matches(|c: char| c == '.' || c.is_whitespace())
        .to_owned()
}

/// At most `max` chars; when something was cut, trailing whitespace and dots go too.
fn cut(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        None => s.to_owned(),
        Some((end, _)) => s[..end]
            .trim_end_matches(|c: char| c == '.' || c.is_whitespace())
            .to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn track(id: &str, artist: &str, title: &str) -> Track {
        Track {
            id: id.into(),
            url: format!("https://soundcloud.com/a/{id}"),
            title: title.into(),
            artist: artist.into(),
        }
    }

    fn stem_chars(name: &str) -> usize {
        name.strip_suffix(".mp3")
            .expect("ends in .mp3")
            .chars()
            .count()
    }

    fn assert_safe(name: &str) {
        assert!(name.ends_with(".mp3"), "{name}");
        assert!(!name.contains(['/', '\\']), "{name}");
        assert!(!name.starts_with('.'), "{name}");
        assert!(
            !name
                .chars()
                .any(|c| c.is_control() || FORBIDDEN.contains(&c)),
            "{name}"
        );
        assert!(
            stem_chars(name) >= 1 && stem_chars(name) <= MAX_NAME_CHARS,
            "{name}"
        );
    }

    #[test]
    fn plain_names() {
        assert_eq!(
            entry_name("Artist Name", "Track Name", "1"),
            "Artist Name - Track Name.mp3"
        );
        assert_eq!(
            entry_name("Unknown Artist", "Track 1", "1"),
            "Unknown Artist - Track 1.mp3"
        );
        assert_eq!(entry_name("Björk", "Jóga", "1"), "Björk - Jóga.mp3");
    }

    #[test]
    fn removes_forbidden_characters() {
        assert_eq!(
            entry_name("AC/DC", "What? <Live>: \"Mix\" | *", "1"),
            "ACDC - What Live Mix.mp3"
        );
        assert_eq!(entry_name("a\\b", "c", "1"), "ab - c.mp3");
    }

    #[test]
    fn removes_control_and_invisible_characters() {
        assert_eq!(
            entry_name("A\u{0}r\u{7f}t", "T\u{1b}[31mi\u{85}tle", "1"),
            "Art - T[31mi tle.mp3"
        );
        assert_eq!(
            entry_name("A", "evil\u{202E}3pm.exe", "1"),
            "A - evil3pm.exe.mp3"
        );
    }

    #[test]
    fn collapses_whitespace() {
        assert_eq!(
            entry_name("  The\t\tBand ", " Song \n\r Two  ", "1"),
            "The Band - Song Two.mp3"
        );
        assert_eq!(entry_name("A\u{3000}\u{a0}B", "C", "1"), "A B - C.mp3");
    }

    #[test]
    fn empty_artist_leaves_the_title() {
        assert_eq!(entry_name("", "Song", "1"), "Song.mp3");
        assert_eq!(entry_name("  ", "Song", "1"), "Song.mp3");
        assert_eq!(entry_name("???", "Song", "1"), "Song.mp3");
        assert_eq!(entry_name("..", "Song", "1"), "Song.mp3");
    }

    #[test]
    fn empty_title_falls_back_to_the_id() {
        assert_eq!(entry_name("", "", "123"), "track_123.mp3");
        assert_eq!(entry_name("", "<>:\"/\\|?*", "123"), "track_123.mp3");
        assert_eq!(entry_name("", "...", "123"), "track_123.mp3");
        assert_eq!(entry_name("", "", "../"), "track.mp3");
        assert_eq!(entry_name("", "", ""), "track.mp3");
        assert_eq!(entry_name("Artist", "???", "9"), "Artist - track_9.mp3");
    }

    #[test]
    fn path_traversal_becomes_a_plain_name() {
        assert_eq!(entry_name("", "../../etc/passwd", "1"), "etcpasswd.mp3");
        assert_eq!(entry_name("..", "..", "1"), "track_1.mp3");
        assert_eq!(entry_name("", ". . .hidden", "1"), "hidden.mp3");
        assert_eq!(entry_name(".env", "x", "1"), "env - x.mp3");
        assert_eq!(entry_name("C:\\Windows", "..\\x", "1"), "CWindows - x.mp3");
        for name in [
            entry_name("", "../../etc/passwd", "1"),
            entry_name("../..", "/etc/passwd", "1"),
            entry_name("", "", "../x"),
        ] {
            assert_safe(&name);
        }
    }

    #[test]
    fn windows_device_names_are_avoided() {
        assert_eq!(entry_name("", "CON", "1"), "_CON.mp3");
        assert_eq!(entry_name("", "lpt1.remix", "1"), "_lpt1.remix.mp3");
        assert_eq!(entry_name("Aux", "x", "1"), "Aux - x.mp3");
        assert_eq!(entry_name("", "nul", "1"), "_nul.mp3");
        assert_eq!(entry_name("", "CONSOLE", "1"), "CONSOLE.mp3");
    }

    #[test]
    fn long_multibyte_titles_are_cut_on_char_boundaries() {
        for title in ["日本語".repeat(100), "🎵🎶".repeat(150), "é".repeat(300)] {
            let name = entry_name("Artist", &title, "1");
            assert_safe(&name);
            assert_eq!(stem_chars(&name), MAX_NAME_CHARS, "{name}");
            assert!(name.starts_with("Artist - "));
        }
        let name = entry_name("", &"日本語".repeat(100), "1");
        assert_eq!(name, format!("{}.mp3", "日本語".repeat(50)));
    }

    #[test]
    fn a_cut_drops_trailing_dots_and_spaces() {
        let title = format!("{}. . x", "a".repeat(MAX_NAME_CHARS - 4));
        assert_eq!(
            entry_name("", &title, "1"),
            format!("{}.mp3", "a".repeat(MAX_NAME_CHARS - 4))
        );
        // Uncut titles keep their dots.
        assert_eq!(entry_name("", "Wait...", "1"), "Wait....mp3");
    }

    #[test]
    fn duplicates_get_numbered() {
        let tracks = [
            track("1", "A", "Song"),
            track("2", "A", "Song"),
            track("3", "A", "Song"),
            track("4", "B", "Song"),
        ];
        assert_eq!(
            assign_names(&tracks),
            [
                "A - Song.mp3",
                "A - Song (2).mp3",
                "A - Song (3).mp3",
                "B - Song.mp3"
            ]
        );
    }

    #[test]
    fn duplicates_ignore_case() {
        let tracks = [
            track("1", "Artist", "Song"),
            track("2", "ARTIST", "song"),
            track("3", "artist", "SONG"),
            track("4", "Ärtist", "x"),
            track("5", "ärtist", "X"),
        ];
        assert_eq!(
            assign_names(&tracks),
            [
                "Artist - Song.mp3",
                "ARTIST - song (2).mp3",
                "artist - SONG (3).mp3",
                "Ärtist - x.mp3",
                "ärtist - X (2).mp3",
            ]
        );
    }

    #[test]
    fn suffixes_do_not_collide_with_real_names() {
        let tracks = [
            track("1", "A", "Song (2)"),
            track("2", "A", "Song"),
            track("3", "A", "Song"),
            track("4", "A", "Song (2)"),
        ];
        assert_eq!(
            assign_names(&tracks),
            [
                "A - Song (2).mp3",
                "A - Song.mp3",
                "A - Song (3).mp3",
                "A - Song (2) (2).mp3"
            ]
        );
    }

    #[test]
    fn duplicates_at_the_length_limit_stay_within_it() {
        let title = "日".repeat(400);
        let tracks: Vec<Track> = (1..=11)
            .map(|i| track(&i.to_string(), "", &title))
            .collect();
        let names = assign_names(&tracks);
        let base = "日".repeat(MAX_NAME_CHARS);
        assert_eq!(names[0], format!("{base}.mp3"));
        assert_eq!(
            names[1],
            format!("{} (2).mp3", &"日".repeat(MAX_NAME_CHARS - 4))
        );
        assert_eq!(
            names[10],
            format!("{} (11).mp3", &"日".repeat(MAX_NAME_CHARS - 5))
        );
        for name in &names {
            assert_safe(name);
        }
        let lower: HashSet<String> = names.iter().map(|n| n.to_lowercase()).collect();
        assert_eq!(lower.len(), names.len());
    }

    #[test]
    fn names_are_always_safe_and_unique() {
        let hostile = [
            ("", ""),
            ("..", ".."),
            ("/", "\\"),
            ("../..", "../../etc/passwd"),
            (".", ".hidden"),
            ("\u{0}", "\u{1f}"),
            ("  ", " . "),
            ("A", "B"),
            ("a", "b"),
            ("A", "B (2)"),
        ];
        let tracks: Vec<Track> = hostile
            .iter()
            .enumerate()
            .map(|(i, (a, t))| track(&i.to_string(), a, t))
            .collect();
        let names = assign_names(&tracks);
        assert_eq!(names.len(), tracks.len());
        for name in &names {
            assert_safe(name);
        }
        let lower: HashSet<String> = names.iter().map(|n| n.to_lowercase()).collect();
        assert_eq!(lower.len(), names.len(), "{names:?}");
    }

    #[test]
    fn no_tracks_no_names() {
        assert!(assign_names(&[]).is_empty());
    }
}
