//! Deployment as code is linted like code: the Dockerfiles (hadolint), the GitHub workflows
//! (actionlint, with shellcheck when it is on PATH) and the SAM template (cfn-lint), plus checks
//! that the files that repeat a fact agree with its source.
//!
//! The linters are pinned in requirements-test.txt and installed into `.venv` by
//! `scripts/setup.sh --test`; `$XOMCLOUD_TOOLS_BIN` points elsewhere. A missing linter fails
//! the test (it never skips).

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn tools_bin() -> PathBuf {
    match std::env::var_os("XOMCLOUD_TOOLS_BIN") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => root().join(".venv").join("bin"),
    }
}

fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("cannot read {path}: {e}"))
}

/// Runs a linter from the repository root and fails with its output unless it exits 0.
fn lint(tool: &str, args: &[&str]) {
    let program = tools_bin().join(tool);
    assert!(
        program.is_file(),
        "{} is missing: install the test tools with `scripts/setup.sh --test` \
         (or point XOMCLOUD_TOOLS_BIN at a directory that has {tool})",
        program.display()
    );
    let output = Command::new(&program)
        .args(args)
        .current_dir(root())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()));
    assert!(
        output.status.success(),
        "`{tool} {}` failed ({}):\n{}{}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
}

#[test]
fn hadolint_dockerfiles() {
    lint(
        "hadolint",
        &[
            "--no-color",
            "Dockerfile.authorizer",
            "Dockerfile.download",
            "Dockerfile.auth-token",
        ],
    );
}

#[test]
fn actionlint_workflows() {
    // Without arguments actionlint lints every file in .github/workflows.
    lint("actionlint", &["-no-color"]);
}

#[test]
fn cfn_lint_template() {
    lint("cfn-lint", &["template.yaml"]);
}

const WORKFLOWS: [&str; 2] = [".github/workflows/ci.yml", ".github/workflows/deploy.yml"];
const DOCKERFILES: [&str; 3] = [
    "Dockerfile.authorizer",
    "Dockerfile.download",
    "Dockerfile.auth-token",
];
const TEST_COMMAND: &str = "scripts/test.sh";

#[test]
fn workflows_run_the_readme_test_command() {
    for workflow in WORKFLOWS {
        let text = read(workflow);
        assert!(
            text.lines()
                .any(|line| line.trim() == format!("run: {TEST_COMMAND}")),
            "{workflow} must test with the README's test command: `run: {TEST_COMMAND}`"
        );
    }
    assert!(
        root().join(TEST_COMMAND).is_file(),
        "{TEST_COMMAND} is missing"
    );
    // The README documents the same command (checked once it has its test section).
    if let Ok(readme) = std::fs::read_to_string(root().join("README.md")) {
        assert!(
            readme.contains(TEST_COMMAND),
            "README.md no longer mentions {TEST_COMMAND}, which the workflows run"
        );
    }
}

/// The Rust version of each `FROM ... rust:X-slim` (Dockerfiles) or
/// `uses: dtolnay/rust-toolchain@X` (workflows) line.
fn toolchains(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter_map(|line| {
            if line.starts_with("FROM ") {
                let image = line.split_whitespace().find(|w| w.starts_with("rust:"))?;
                let tag = &image["rust:".len()..];
                Some(tag.split('-').next().unwrap_or(tag).to_owned())
            } else {
                let at = line.find("uses: dtolnay/rust-toolchain@")?;
                let rev = &line[at + "uses: dtolnay/rust-toolchain@".len()..];
                Some(rev.split_whitespace().next().unwrap_or(rev).to_owned())
            }
        })
        .collect()
}

#[test]
fn images_and_workflows_use_one_rust_toolchain() {
    let mut seen = Vec::new();
    for file in DOCKERFILES.iter().chain(WORKFLOWS.iter()) {
        let found = toolchains(&read(file));
        assert!(
            !found.is_empty(),
            "{file}: no `FROM rust:X-slim` stage / `uses: dtolnay/rust-toolchain@X` step"
        );
        seen.extend(found.into_iter().map(|version| (*file, version)));
    }
    let first = &seen[0].1;
    assert!(
        first.split('.').count() == 3 && seen.iter().all(|(_, v)| v == first),
        "the Dockerfiles and workflows must build with one pinned Rust toolchain X.Y.Z: {seen:?}"
    );
}

#[test]
fn download_image_pins_scdl_like_requirements() {
    let requirements = read("requirements.txt");
    let pin = requirements
        .lines()
        .map(str::trim)
        .find(|line| line.starts_with("scdl=="))
        .expect("requirements.txt pins scdl (a `scdl==VERSION` line)");
    let download = read("Dockerfile.download");
    assert!(
        download.contains(pin),
        "Dockerfile.download must install {pin}, the scdl of requirements.txt"
    );
    assert_eq!(
        download.matches("scdl==").count(),
        download.matches(pin).count(),
        "Dockerfile.download installs an scdl other than {pin}"
    );
    // The test tools run the same scdl as the runtime.
    let test_requirements = read("requirements-test.txt");
    if let Some(test_pin) = test_requirements
        .lines()
        .map(str::trim)
        .find(|line| line.starts_with("scdl=="))
    {
        assert_eq!(
            test_pin, pin,
            "requirements-test.txt and requirements.txt pin different scdl versions"
        );
    }
    // The authorizer image has no Python at all.
    assert!(
        !read("Dockerfile.authorizer").contains("scdl"),
        "Dockerfile.authorizer must not install scdl"
    );
}
