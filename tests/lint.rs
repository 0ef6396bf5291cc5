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
    // The README documents the same command (a missing README fails: no silent skip).
    assert!(
        read("README.md").contains(TEST_COMMAND),
        "README.md no longer mentions {TEST_COMMAND}, which the workflows run"
    );
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
    let test_pin = test_requirements
        .lines()
        .map(str::trim)
        .find(|line| line.starts_with("scdl=="))
        .expect("requirements-test.txt pins scdl (a `scdl==VERSION` line)");
    assert_eq!(
        test_pin, pin,
        "requirements-test.txt and requirements.txt pin different scdl versions"
    );
    // The authorizer image has no Python at all.
    assert!(
        !read("Dockerfile.authorizer").contains("scdl"),
        "Dockerfile.authorizer must not install scdl"
    );
}

/// Parses an HCL file with python-hcl2 and, beside it, reads template.yaml's IAM statements:
/// prints `{"resource": {"TYPE.NAME": body}, "data": {...}, "locals": {...}, "variable":
/// {"NAME": body}, "comments": [...], "template": {"FUNCTION": {"SID": [actions]}},
/// "cfn": template.yaml}` with the strings' HCL quotes removed. In `cfn` a tagged scalar is the
/// string `"!Tag value"` (`"!Ref TrackWorkersMaxConcurrency"`), other tagged nodes are null.
const HCL_SUMMARY: &str = r#"
import json, sys
import hcl2, yaml

def unquote(s):
    return s[1:-1] if len(s) >= 2 and s[0] == '"' and s[-1] == '"' else s

def norm(v):
    if isinstance(v, dict):
        return {unquote(k): norm(x) for k, x in v.items() if not k.startswith("__")}
    if isinstance(v, list):
        return [norm(x) for x in v]
    return unquote(v) if isinstance(v, str) else v

with open(sys.argv[1]) as f:
    doc = hcl2.load(f)
out = {"resource": {}, "data": {}, "locals": {}, "variable": {}, "template": {},
       "comments": [c["value"] for c in doc.get("__comments__", [])]}
for kind in ("resource", "data"):
    for block in doc.get(kind, []):
        for kind_type, named in block.items():
            for name, body in named.items():
                out[kind][unquote(kind_type) + "." + unquote(name)] = norm(body)
for block in doc.get("locals", []):
    out["locals"].update(norm(block))
for block in doc.get("variable", []):
    for name, body in block.items():
        out["variable"][unquote(name)] = norm(body)

class Loader(yaml.SafeLoader):
    pass
def tagged(loader, tag, node):
    if isinstance(node, yaml.ScalarNode):
        return "!" + tag + " " + loader.construct_scalar(node)
    return None
Loader.add_multi_constructor("!", tagged)
with open(sys.argv[2]) as f:
    template = yaml.load(f, Loader=Loader)
for name, res in template["Resources"].items():
    for policy in (res.get("Properties") or {}).get("Policies") or []:
        for st in policy.get("Statement", []):
            actions = st["Action"] if isinstance(st["Action"], list) else [st["Action"]]
            out["template"].setdefault(name, {})[st["Sid"]] = actions
out["cfn"] = template
print(json.dumps(out, default=str))
"#;

fn hcl_summary(path: &str) -> serde_json::Value {
    let python = tools_bin().join("python");
    assert!(
        python.is_file(),
        "{} is missing: install the test tools with `scripts/setup.sh --test`",
        python.display()
    );
    let output = Command::new(&python)
        .args(["-c", HCL_SUMMARY, path, "template.yaml"])
        .current_dir(root())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", python.display()));
    assert!(
        output.status.success(),
        "python-hcl2 could not parse {path} (or python-hcl2 is not installed: \
         `scripts/setup.sh --test`):\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("the summary is JSON")
}

/// template.yaml as JSON, a tagged scalar as the string `"!Tag value"` (other tagged nodes null).
const TEMPLATE_JSON: &str = r#"
import json, sys
import yaml

class Loader(yaml.SafeLoader):
    pass
def tagged(loader, tag, node):
    if isinstance(node, yaml.ScalarNode):
        return "!" + tag + " " + loader.construct_scalar(node)
    return None
Loader.add_multi_constructor("!", tagged)
with open(sys.argv[1]) as f:
    print(json.dumps(yaml.load(f, Loader=Loader), default=str))
"#;

fn template_json() -> serde_json::Value {
    let python = tools_bin().join("python");
    assert!(
        python.is_file(),
        "{} is missing: install the test tools with `scripts/setup.sh --test`",
        python.display()
    );
    let output = Command::new(&python)
        .args(["-c", TEMPLATE_JSON, "template.yaml"])
        .current_dir(root())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", python.display()));
    assert!(
        output.status.success(),
        "could not read template.yaml with PyYAML:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("template.yaml as JSON")
}

/// SoundCloud-facing concurrency is bounded by the track queue's event source mapping
/// (`ScalingConfig.MaximumConcurrency`), never by reserved concurrency, which takes from the
/// account's unreserved pool and fails to deploy on accounts with a low concurrency quota.
#[test]
fn template_bounds_track_fetches_by_the_mapping_not_reserved_concurrency() {
    use serde_json::json;
    let template = template_json();
    let resources = template["Resources"].as_object().expect("Resources");
    let worker = &resources["JobsWorkerFunction"]["Properties"];
    let tracks = &worker["Events"]["Tracks"];
    assert_eq!(tracks["Type"], "SQS", "JobsWorkerFunction's Tracks event");
    assert_eq!(
        tracks["Properties"],
        json!({
            "Queue": "!GetAtt TrackQueue.Arn",
            "BatchSize": 1,
            "FunctionResponseTypes": ["ReportBatchItemFailures"],
            "ScalingConfig": {"MaximumConcurrency": "!Ref TrackWorkersMaxConcurrency"},
        })
    );
    assert_eq!(
        worker["Environment"]["Variables"]["TRACK_QUEUE_URL"],
        "!Ref TrackQueue"
    );
    let parameter = &template["Parameters"]["TrackWorkersMaxConcurrency"];
    assert_eq!(
        (
            &parameter["Type"],
            &parameter["Default"],
            &parameter["MinValue"],
            &parameter["MaxValue"]
        ),
        (&json!("Number"), &json!(20), &json!(2), &json!(1000))
    );
    for (name, resource) in resources {
        let kind = resource["Type"].as_str().unwrap_or_default();
        if kind == "AWS::Serverless::Function" || kind == "AWS::Lambda::Function" {
            assert!(
                resource["Properties"]
                    .get("ReservedConcurrentExecutions")
                    .is_none(),
                "{name} sets ReservedConcurrentExecutions: bound SoundCloud fetches with the \
                 track mapping's MaximumConcurrency instead"
            );
        }
    }
    assert!(
        template["Globals"]["Function"]
            .get("ReservedConcurrentExecutions")
            .is_none(),
        "Globals.Function sets ReservedConcurrentExecutions"
    );
}

/// The statements of an `aws_iam_policy_document`: Sid → actions, sorted.
fn policy_sids(document: &serde_json::Value) -> std::collections::BTreeMap<String, Vec<String>> {
    let mut sids = std::collections::BTreeMap::new();
    for statement in document["statement"].as_array().expect("statements") {
        let sid = statement["sid"]
            .as_str()
            .expect("every statement has a sid");
        let mut actions: Vec<String> = statement["actions"]
            .as_array()
            .expect("actions")
            .iter()
            .map(|a| a.as_str().unwrap().to_owned())
            .collect();
        actions.sort();
        sids.insert(sid.to_owned(), actions);
    }
    sids
}

/// `deploy/terraform/jobs.tf`, the jobs add-on for the XOMCLOUD infrastructure's Terraform.
/// A parse check with python-hcl2 (HCL syntax) plus what the file must define, compared with
/// template.yaml where the two repeat a fact. It is not `terraform fmt -check` nor `terraform
/// validate`: the test machines have neither terraform nor its providers.
#[test]
fn terraform_jobs_addon_parses_and_matches_the_template() {
    use serde_json::json;
    let doc = hcl_summary("deploy/terraform/jobs.tf");
    let resources = &doc["resource"];
    let resource = |name: &str| {
        let body = &resources[name];
        assert!(
            body.is_object(),
            "deploy/terraform/jobs.tf defines no {name}"
        );
        body
    };

    // The table: pk/sk strings, on demand, TTL on expires_at.
    let table = resource("aws_dynamodb_table.jobs");
    assert_eq!(
        (
            &table["billing_mode"],
            &table["hash_key"],
            &table["range_key"]
        ),
        (&json!("PAY_PER_REQUEST"), &json!("pk"), &json!("sk"))
    );
    assert_eq!(
        table["attribute"],
        json!([{"name": "pk", "type": "S"}, {"name": "sk", "type": "S"}])
    );
    assert_eq!(
        table["ttl"],
        json!([{"attribute_name": "expires_at", "enabled": true}])
    );

    // The queue: visibility 6 × the worker's timeout (template.yaml's figures), DLQ after 3.
    let timeout = doc["locals"]["jobs_worker_timeout"]
        .as_u64()
        .expect("local.jobs_worker_timeout");
    let template = read("template.yaml");
    let after = |anchor: &str, key: &str| -> u64 {
        let at = template
            .find(anchor)
            .unwrap_or_else(|| panic!("template.yaml has no {anchor}"));
        let rest = &template[at..];
        let line = rest[rest
            .find(key)
            .unwrap_or_else(|| panic!("no {key} after {anchor}"))..]
            .lines()
            .next()
            .unwrap();
        line[key.len()..].trim().parse().unwrap()
    };
    assert_eq!(timeout, after("  JobsWorkerFunction:", "Timeout: "));
    // The jobs and track queues: visibility 6 × the timeout, the one DLQ, encrypted alike.
    for (anchor, name) in [
        ("  JobsQueue:", "aws_sqs_queue.jobs"),
        ("  TrackQueue:", "aws_sqs_queue.tracks"),
    ] {
        assert_eq!(6 * timeout, after(anchor, "VisibilityTimeout: "));
        let queue = resource(name);
        assert_eq!(
            queue["visibility_timeout_seconds"],
            "${6 * local.jobs_worker_timeout}"
        );
        let redrive = queue["redrive_policy"].as_str().unwrap();
        assert!(
            redrive.contains("deadLetterTargetArn = aws_sqs_queue.jobs_dlq.arn")
                && redrive.contains("maxReceiveCount = 3"),
            "{name}: {redrive}"
        );
    }
    assert_eq!(
        resource("aws_sqs_queue.tracks")["sqs_managed_sse_enabled"],
        resource("aws_sqs_queue.jobs")["sqs_managed_sse_enabled"],
        "aws_sqs_queue.tracks is encrypted like aws_sqs_queue.jobs"
    );
    resource("aws_sqs_queue.jobs_dlq");
    let cfn = &doc["cfn"]["Resources"];
    for name in ["JobsQueue", "TrackQueue"] {
        assert_eq!(
            cfn[name]["Properties"]["RedrivePolicy"],
            json!({"deadLetterTargetArn": "!GetAtt JobsDeadLetterQueue.Arn", "maxReceiveCount": 3}),
            "template.yaml's {name} redrives to JobsDeadLetterQueue after 3 receives"
        );
    }

    // The worker: the download image, command jobs-worker, its environment.
    let worker = resource("aws_lambda_function.jobs_worker");
    assert_eq!(
        worker["image_config"],
        json!([{"command": ["jobs-worker"]}])
    );
    assert_eq!(worker["timeout"], "${local.jobs_worker_timeout}");
    assert!(worker["image_uri"]
        .as_str()
        .unwrap()
        .contains("aws_ecr_repository.download_tracks"));
    let env = worker["environment"][0]["variables"].as_str().unwrap();
    for var in [
        "S3_DOWNLOAD_BUCKET_NAME = aws_s3_bucket.downloads.id",
        "JOBS_TABLE = aws_dynamodb_table.jobs.name",
        "JOBS_QUEUE_URL = aws_sqs_queue.jobs.url",
        "TRACK_QUEUE_URL = aws_sqs_queue.tracks.url",
        "JOBS_DLQ_ARN = aws_sqs_queue.jobs_dlq.arn",
    ] {
        assert!(
            env.contains(var),
            "the worker's environment lacks {var}: {env}"
        );
    }

    // The three queues feed the worker one record at a time, reporting failures per record.
    for (mapping, queue) in [
        ("jobs", "jobs"),
        ("tracks", "tracks"),
        ("jobs_dlq", "jobs_dlq"),
    ] {
        let esm = resource(&format!("aws_lambda_event_source_mapping.{mapping}"));
        assert_eq!(
            esm["event_source_arn"],
            format!("${{aws_sqs_queue.{queue}.arn}}")
        );
        assert_eq!(
            esm["function_name"],
            "${aws_lambda_function.jobs_worker.arn}"
        );
        assert_eq!(esm["batch_size"], 1);
        assert_eq!(
            esm["function_response_types"],
            json!(["ReportBatchItemFailures"])
        );
    }

    // SoundCloud-facing concurrency: the track mapping's maximum concurrency, a variable whose
    // default is the template parameter's (never reserved concurrency, see below).
    let scaling = &resource("aws_lambda_event_source_mapping.tracks")["scaling_config"];
    assert_eq!(
        scaling,
        &json!([{"maximum_concurrency": "${var.track_workers_max_concurrency}"}])
    );
    let variable = &doc["variable"]["track_workers_max_concurrency"];
    assert_eq!(
        (&variable["type"], &variable["default"]),
        (&json!("number"), &json!(20)),
        "variable.track_workers_max_concurrency: {variable}"
    );
    let parameter = &doc["cfn"]["Parameters"]["TrackWorkersMaxConcurrency"];
    assert_eq!(
        variable["default"], parameter["Default"],
        "the variable's default is template.yaml's TrackWorkersMaxConcurrency Default"
    );
    assert_eq!(
        (&parameter["MinValue"], &parameter["MaxValue"]),
        (&json!(2), &json!(1000))
    );

    // IAM: the same statements (Sid and actions) as template.yaml's. The worker may add only
    // what the Terraform setting needs beyond SAM: the SQS consumer rights SAM adds by itself,
    // its log group, X-Ray (tracing on) and the bucket's KMS key (SSE-KMS there).
    let data = &doc["data"];
    let lambda_role = resource("aws_iam_role_policy.lambda_role_jobs");
    assert_eq!(lambda_role["role"], "${aws_iam_role.lambda_role.id}");
    let download = policy_sids(&data["aws_iam_policy_document.lambda_role_jobs"]);
    let template_sids = |function: &str, sids: &[&str]| {
        sids.iter()
            .map(|sid| {
                let mut actions: Vec<String> = doc["template"][function][sid]
                    .as_array()
                    .unwrap_or_else(|| panic!("template.yaml's {function} has no statement {sid}"))
                    .iter()
                    .map(|a| a.as_str().unwrap().to_owned())
                    .collect();
                actions.sort();
                (sid.to_string(), actions)
            })
            .collect::<std::collections::BTreeMap<_, _>>()
    };
    assert_eq!(
        download,
        template_sids("DownloadFunction", &["Jobs", "QueueJobs"])
    );
    let worker_role = resource("aws_iam_role_policy.jobs_worker_policy");
    assert_eq!(worker_role["role"], "${aws_iam_role.jobs_worker.id}");
    assert_eq!(worker["role"], "${aws_iam_role.jobs_worker.arn}");
    let mut worker_sids = policy_sids(&data["aws_iam_policy_document.jobs_worker_policy"]);
    let shared = [
        "ReadSecrets",
        "DecryptSecrets",
        "WriteDownloads",
        "DeleteJobTracks",
        "ListJobTracks",
        "RunJobs",
        "QueueSteps",
    ];
    for (sid, actions) in template_sids("JobsWorkerFunction", &shared) {
        assert_eq!(
            worker_sids.remove(&sid),
            Some(actions),
            "the worker's {sid}"
        );
    }
    let extra: Vec<&String> = worker_sids.keys().collect();
    assert_eq!(extra, ["ConsumeJobs", "DownloadsKey", "Logs", "Tracing"]);

    // The routes, behind the authorizer, all to the download function.
    assert_eq!(
        resource("aws_api_gateway_resource.jobs")["path_part"],
        "jobs"
    );
    let job = resource("aws_api_gateway_resource.job");
    assert_eq!(
        (&job["path_part"], &job["parent_id"]),
        (
            &json!("{id}"),
            &json!("${aws_api_gateway_resource.jobs.id}")
        )
    );
    let routes: Vec<(String, String)> = doc["locals"]["jobs_endpoints"]
        .as_array()
        .expect("local.jobs_endpoints")
        .iter()
        .map(|e| {
            (
                e["http_method"].as_str().unwrap().to_owned(),
                e["resource"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let want = [("POST", "jobs"), ("GET", "job"), ("DELETE", "job")];
    assert_eq!(
        routes,
        want.map(|(m, r)| (m.to_owned(), r.to_owned())).to_vec()
    );
    let method = resource("aws_api_gateway_method.jobs_endpoint");
    assert_eq!(method["for_each"], "${local.jobs_endpoints_map}");
    assert_eq!(
        (&method["authorization"], &method["authorizer_id"]),
        (&json!("CUSTOM"), &json!("${module.api.authorizer_id}"))
    );
    let integration = resource("aws_api_gateway_integration.jobs_endpoint");
    assert_eq!(
        (&integration["type"], &integration["uri"]),
        (
            &json!("AWS_PROXY"),
            &json!("${aws_lambda_function.download_tracks.invoke_arn}")
        )
    );

    // What belongs in that repository's own files, shown as comments.
    let comments = doc["comments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().trim())
        .collect::<Vec<_>>()
        .join("\n");
    for line in [
        "JOBS_TABLE              = aws_dynamodb_table.jobs.name",
        "JOBS_QUEUE_URL          = aws_sqs_queue.jobs.url",
        "prefix = \"jobs/\"",
    ] {
        assert!(comments.contains(line), "jobs.tf no longer shows `{line}`");
    }
}
