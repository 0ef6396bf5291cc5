//! The link rule, one list of cases for both sides: `tests/fixtures/url-cases.json` runs here
//! against the server's `check_url` and in `tests/web_ui.rs` against the page's copy of it
//! (`src/web/app.js`), so the page flags exactly the lines the server would refuse.

use std::path::Path;

use serde_json::Value;
use xomcloud_download_tracks::validate::check_url;

fn cases() -> Vec<Value> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/url-cases.json");
    let text = std::fs::read_to_string(&path).expect("tests/fixtures/url-cases.json");
    let cases: Vec<Value> = serde_json::from_str(&text).expect("a JSON list");
    assert!(cases.len() >= 40, "only {} URL cases", cases.len());
    cases
}

#[test]
fn check_url_decides_every_case_as_the_fixture_says() {
    let cases = cases();
    let mut wrong = Vec::new();
    for case in &cases {
        let url = case["url"].as_str().expect("url");
        let ok = case["ok"].as_bool().expect("ok");
        let got = check_url(url);
        if got.is_ok() != ok {
            wrong.push(format!("{url:?} ({}): {got:?}", case["note"]));
        }
        // A refused case names the server's reason, which the page repeats word for word.
        if let (Err(why), Some(expected)) = (&got, case["why"].as_str()) {
            if why != expected {
                wrong.push(format!("{url:?}: reason {why:?}, fixture {expected:?}"));
            }
        }
        if !ok && case["why"].is_null() {
            wrong.push(format!("{url:?}: a refused case needs its \"why\""));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    // Both kinds, so neither side can pass by accepting or refusing everything.
    assert!(cases.iter().filter(|c| c["ok"] == true).count() >= 10);
    assert!(cases.iter().filter(|c| c["ok"] == false).count() >= 30);
}
