//! Where the end-to-end tests find the compiled Lambda binaries and the test tools.

use std::path::{Path, PathBuf};

/// A binary of this workspace, built by `cargo build --workspace --bins` next to the test
/// executable's directory (`target/debug/deps/xxx` → `target/debug/{name}`).
pub fn workspace_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("path of the test executable");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .unwrap_or_else(|| panic!("{} has no grandparent directory", exe.display()));
    let bin = dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.is_file(),
        "{} is missing: run `cargo build --workspace --bins` (scripts/test.sh does it)",
        bin.display()
    );
    bin
}

/// The directory of the test tools: `$XOMCLOUD_TOOLS_BIN`, else `<repo>/.venv/bin`.
pub fn tools_dir() -> PathBuf {
    match std::env::var_os("XOMCLOUD_TOOLS_BIN") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => Path::new(env!("CARGO_MANIFEST_DIR"))
            .join(".venv")
            .join("bin"),
    }
}

/// A test tool (moto_server, python…) from [`tools_dir`]; panics when it is not installed.
pub fn tools_bin(name: &str) -> PathBuf {
    let bin = tools_dir().join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.is_file(),
        "test tool {} is missing: run `scripts/setup.sh --test` (or set XOMCLOUD_TOOLS_BIN)",
        bin.display()
    );
    bin
}
