//! The Terraform's grants against the code's calls.
//!
//! Reads the grants `infrastructure/terraform` gives the backend's runtime account (the account
//! its Cloud Run service runs as), resolves each role to its permissions, gives the mock server
//! exactly those, and runs every path the backend and the `cloud-tasks` command line take. Each
//! path works, or fails with PERMISSION_DENIED naming the permission and the role it needs, a
//! role that `iam.tf`, `infrastructure/README.md` and `README.md` name too. The tests that
//! break the module show that removing a grant makes the paths that need it fail.

mod common;
#[path = "common/terraform.rs"]
mod module;

use std::process::Output;

use cloud_tasks::testing::MockCloudTasks;
use cloud_tasks::{BatchOptions, CallOptions, CloudTasksClient, DocumentTask, Uuid};
use common::*;
use serde_json::Value;

/// Permissions of the predefined roles the module may grant the runtime account, from IAM's
/// "Cloud Tasks roles and permissions" (<https://cloud.google.com/iam/docs/roles-permissions/cloudtasks>,
/// and Cloud Tasks' "Access control" page, which lists the same) and "Service Accounts roles
/// and permissions"
/// (<https://cloud.google.com/iam/docs/roles-permissions/iam>), read 2026-12. A role granted
/// to it that is missing here fails the test: add it with its permissions and source.
const PREDEFINED_ROLES: &[(&str, &[&str])] = &[
    (
        "roles/cloudtasks.enqueuer",
        &[
            "cloudtasks.tasks.create",
            "cloudtasks.tasks.fullView",
            "resourcemanager.projects.get",
            "resourcemanager.projects.list",
        ],
    ),
    (
        "roles/cloudtasks.viewer",
        &[
            "cloudtasks.locations.get",
            "cloudtasks.locations.list",
            "cloudtasks.queues.get",
            "cloudtasks.queues.list",
            "cloudtasks.tasks.get",
            "cloudtasks.tasks.list",
            "resourcemanager.projects.get",
            "resourcemanager.projects.list",
        ],
    ),
    (
        "roles/cloudtasks.taskDeleter",
        &[
            "cloudtasks.tasks.delete",
            "resourcemanager.projects.get",
            "resourcemanager.projects.list",
        ],
    ),
    (
        "roles/cloudtasks.taskRunner",
        &[
            "cloudtasks.tasks.fullView",
            "cloudtasks.tasks.run",
            "resourcemanager.projects.get",
            "resourcemanager.projects.list",
        ],
    ),
    (
        "roles/iam.serviceAccountUser",
        &[
            "iam.serviceAccounts.actAs",
            "iam.serviceAccounts.get",
            "iam.serviceAccounts.list",
            "resourcemanager.projects.get",
            "resourcemanager.projects.list",
        ],
    ),
];

/// Permissions granted on one resource (a full name; a service account by its email).
#[derive(Debug)]
struct Grant {
    resource: String,
    permissions: Vec<String>,
}

/// Every resource of the module as `(type, name, body)`.
fn resources(module: &[Value]) -> Vec<(String, String, Value)> {
    let mut found = Vec::new();
    for file in module {
        let Some(types) = file["contents"]["resource"].as_object() else {
            continue;
        };
        for (kind, named) in types {
            for (name, bodies) in named.as_object().expect("resources by name") {
                for body in bodies.as_array().expect("a block is a list of bodies") {
                    found.push((kind.clone(), name.clone(), body.clone()));
                }
            }
        }
    }
    found
}

/// `(NAME, ATTRIBUTE)` when `value` is the reference `${KIND.NAME.ATTRIBUTE}`.
fn reference<'a>(value: &'a Value, kind: &str) -> Option<(&'a str, &'a str)> {
    let text = value.as_str()?.strip_prefix("${")?.strip_suffix('}')?;
    let mut parts = text.split('.');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(k), Some(name), Some(attribute), None) if k == kind => Some((name, attribute)),
        _ => None,
    }
}

/// The `google_service_account` an IAM member names: `google_service_account.NAME.member`, or
/// `"serviceAccount:${google_service_account.NAME.email}"`.
fn member_account(member: &Value) -> Option<String> {
    if let Some((name, "member")) = reference(member, "google_service_account") {
        return Some(name.to_owned());
    }
    let email = Value::from(member.as_str()?.strip_prefix("serviceAccount:")?);
    match reference(&email, "google_service_account") {
        Some((name, "email")) => Some(name.to_owned()),
        _ => None,
    }
}

/// The grants the module gives the account its Cloud Run service runs as, with each role
/// resolved to its permissions.
fn runtime_grants(files: &[(String, String)]) -> Vec<Grant> {
    let module = module::module_json(files);
    let resources = resources(&module);
    let service = resources
        .iter()
        .find(|(kind, _, _)| kind == "google_cloud_run_v2_service")
        .map(|(_, _, body)| body)
        .expect("the module declares the backend's Cloud Run service");
    let template = &service["template"][0];
    let runtime = reference(&template["service_account"], "google_service_account")
        .map(|(name, _)| name)
        .expect("the service runs as a declared google_service_account");
    let oidc_account = template["containers"][0]["env"]
        .as_array()
        .expect("the container's env")
        .iter()
        .find(|env| env["name"] == "CLOUD_RUN_SERVICE_ACCOUNT")
        .and_then(|env| reference(&env["value"], "google_service_account"))
        .map(|(name, _)| name)
        .expect("CLOUD_RUN_SERVICE_ACCOUNT is a declared google_service_account's email");
    let queues = resources
        .iter()
        .filter(|(kind, _, _)| kind == "google_cloud_tasks_queue")
        .count();
    assert_eq!(
        queues, 1,
        "the test maps the module's one queue to {QUEUE_PATH}"
    );

    let mut grants = Vec::new();
    for (kind, name, body) in &resources {
        if !kind.ends_with("_iam_member") && !kind.ends_with("_iam_binding") {
            continue;
        }
        let members: Vec<&Value> = match (&body["member"], &body["members"]) {
            (Value::Null, Value::Array(members)) => members.iter().collect(),
            (member, _) => vec![member],
        };
        if !members
            .iter()
            .any(|member| member_account(member).as_deref() == Some(runtime))
        {
            continue;
        }
        let resource = match kind.as_str() {
            "google_cloud_tasks_queue_iam_member" | "google_cloud_tasks_queue_iam_binding" => {
                QUEUE_PATH.to_owned()
            }
            "google_service_account_iam_member" | "google_service_account_iam_binding" => {
                match reference(&body["service_account_id"], "google_service_account") {
                    Some((account, _)) if account == oidc_account => SERVICE_ACCOUNT.to_owned(),
                    Some((account, _)) => format!("{account}@{PROJECT}.iam.gserviceaccount.com"),
                    None => panic!("{kind}.{name}: service_account_id names no declared account"),
                }
            }
            "google_project_iam_member" | "google_project_iam_binding" => {
                format!("projects/{PROJECT}")
            }
            "google_cloud_run_v2_service_iam_member" => {
                format!("projects/{PROJECT}/locations/{LOCATION}/services/{name}")
            }
            other => panic!("{other}.{name}: a grant on a resource this test cannot place"),
        };
        let role = &body["role"];
        let permissions: Vec<String> =
            if let Some((custom, _)) = reference(role, "google_project_iam_custom_role") {
                let (_, _, role_body) = resources
                    .iter()
                    .find(|(k, n, _)| k == "google_project_iam_custom_role" && n == custom)
                    .unwrap_or_else(|| panic!("{kind}.{name}: custom role {custom} not declared"));
                serde_json::from_value(role_body["permissions"].clone())
                    .expect("a custom role's permissions are a literal list")
            } else {
                let role = role.as_str().expect("a role");
                let (_, permissions) = PREDEFINED_ROLES
                    .iter()
                    .find(|(known, _)| *known == role)
                    .unwrap_or_else(|| {
                        panic!(
                            "{kind}.{name} grants {role} to the runtime account; add its \
                             permissions to PREDEFINED_ROLES with their source"
                        )
                    });
                permissions.iter().map(|p| (*p).to_owned()).collect()
            };
        grants.push(Grant {
            resource,
            permissions,
        });
    }
    grants
}

/// What one path did against the mock server.
#[derive(Debug)]
struct Report {
    path: &'static str,
    /// The error the caller saw (a CLI's stdout and stderr), if any.
    error: Option<String>,
    /// Tasks the server holds that it did not before.
    created: usize,
    /// Tasks the path creates when it works.
    creates: usize,
    /// The queue's task count, and the dispatch count of its first task (the one the document
    /// paths act on), afterwards.
    seeded: (usize, i32),
}

const BATCH: usize = 120;

fn documents(count: usize) -> Vec<DocumentTask> {
    (0..count)
        .map(|index| DocumentTask::new(Uuid::new_v4(), format!("scan {index}.pdf")))
        .collect()
}

async fn cli(server: &MockCloudTasks, args: &[&str], stdin: Option<String>) -> Output {
    let dir = std::env::temp_dir().join(format!("cloud-tasks-iam-{}", Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut command = cli_command(env!("CARGO_BIN_EXE_cloud-tasks"), &server.host());
    command.args(args).current_dir(dir);
    output_with_stdin(command, stdin.as_deref().map(str::as_bytes)).await
}

/// `None` if the command succeeded, otherwise everything it printed.
fn cli_error(output: &Output) -> Option<String> {
    (!output.status.success()).then(|| {
        format!(
            "exit {:?}: {}{}",
            output.status.code(),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

fn first_error<T>(outcomes: &[Result<T, cloud_tasks::Error>]) -> Option<String> {
    outcomes
        .iter()
        .find_map(|outcome| outcome.as_ref().err().map(ToString::to_string))
}

/// Runs every path with the caller holding exactly `grants`. Every batch's operation is not
/// done at first (two polls), so the bulk paths must read it with GetOperation.
async fn run_paths(grants: &[Grant]) -> Vec<Report> {
    let server = MockCloudTasks::start().await.unwrap();
    let client: CloudTasksClient = builder().with_emulator_host(server.host()).build().unwrap();
    // A de-duplicated task for the document paths, created before any grant applies.
    let seeded = Uuid::new_v4();
    client
        .enqueue(
            DocumentTask::new(seeded, "seed.pdf").deduplicated(),
            &CallOptions::new(),
        )
        .await
        .unwrap();
    for grant in grants {
        server.grant(&grant.resource, grant.permissions.iter().cloned());
    }
    server.set_operation_polls(2);
    let seeded = seeded.to_string();
    let call = CallOptions::new();

    let mut reports = Vec::new();
    let mut report = |path, error, creates, before: usize| {
        let tasks = server.tasks();
        reports.push(Report {
            path,
            error,
            created: tasks.len().saturating_sub(before),
            creates,
            seeded: (tasks.len(), tasks[0].dispatch_count),
        });
    };
    let count = || server.tasks().len();

    let before = count();
    let error = client
        .create_document_processing_task(Uuid::new_v4(), "upload.pdf")
        .await
        .err()
        .map(|e| e.to_string());
    report("backend upload: CreateTask, unnamed", error, 1, before);

    let before = count();
    let error = client
        .enqueue(
            DocumentTask::new(Uuid::new_v4(), "a.pdf").deduplicated(),
            &call,
        )
        .await
        .err()
        .map(|e| e.to_string());
    report("enqueue de-duplicated: CreateTask, named", error, 1, before);

    let before = count();
    let outcomes = client
        .enqueue_all(documents(BATCH), BatchOptions::new())
        .await;
    report(
        "enqueue_all: BatchCreateTasks, unnamed (FULL view), GetOperation",
        first_error(&outcomes),
        BATCH,
        before,
    );

    let before = count();
    let outcomes = client
        .enqueue_all(documents(BATCH), BatchOptions::new().with_dedupe(true))
        .await;
    report(
        "enqueue_all de-duplicated: BatchCreateTasks, named, GetOperation",
        first_error(&outcomes),
        BATCH,
        before,
    );

    let before = count();
    let id = Uuid::new_v4().to_string();
    let output = cli(
        &server,
        &[
            "enqueue",
            "--document-id",
            &id,
            "--filename",
            "b.pdf",
            "--dedupe",
        ],
        None,
    )
    .await;
    report(
        "cloud-tasks enqueue --dedupe",
        cli_error(&output),
        1,
        before,
    );

    let before = count();
    let lines: String = (0..BATCH)
        .map(|index| {
            format!(
                "{{\"document_id\": \"{}\", \"filename\": \"line {index}.pdf\"}}\n",
                Uuid::new_v4()
            )
        })
        .collect();
    let output = cli(&server, &["enqueue-batch", "-"], Some(lines)).await;
    report(
        "cloud-tasks enqueue-batch",
        cli_error(&output),
        BATCH,
        before,
    );

    for (path, args) in [
        (
            "cloud-tasks status",
            ["status", "--document-id", seeded.as_str()],
        ),
        ("cloud-tasks run", ["run", "--document-id", seeded.as_str()]),
        (
            "cloud-tasks cancel",
            ["cancel", "--document-id", seeded.as_str()],
        ),
    ] {
        let before = count();
        let output = cli(&server, &args, None).await;
        report(path, cli_error(&output), 0, before);
    }
    let before = count();
    let output = cli(&server, &["list", "--limit", "5"], None).await;
    report("cloud-tasks list", cli_error(&output), 0, before);
    reports
}

/// The paths the runtime account is not meant to take, the permission each needs and the role
/// an operator gets for it.
const OPERATOR_PATHS: &[(&str, &str, &str)] = &[
    (
        "cloud-tasks status",
        "cloudtasks.tasks.get",
        "roles/cloudtasks.viewer",
    ),
    (
        "cloud-tasks run",
        "cloudtasks.tasks.run",
        "roles/cloudtasks.taskRunner",
    ),
    (
        "cloud-tasks cancel",
        "cloudtasks.tasks.delete",
        "roles/cloudtasks.taskDeleter",
    ),
    (
        "cloud-tasks list",
        "cloudtasks.tasks.list",
        "roles/cloudtasks.viewer",
    ),
];

fn read(path: &str) -> String {
    std::fs::read_to_string(format!("{}/{path}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

/// The reports, each checked against what the real module's grants allow: the enqueue paths
/// work and create what they should; the operator paths fail naming their permission and
/// role, change nothing, and the docs and the Terraform name that role.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_runtime_accounts_grants_cover_every_enqueue_path() {
    let grants = runtime_grants(&module::module_files());
    let reports = run_paths(&grants).await;
    assert_eq!(reports.len(), 10);
    let docs = [
        (
            "infrastructure/terraform/iam.tf",
            read("infrastructure/terraform/iam.tf"),
        ),
        ("infrastructure/README.md", read("infrastructure/README.md")),
        ("README.md", read("README.md")),
    ];
    for report in &reports {
        match OPERATOR_PATHS
            .iter()
            .find(|(path, _, _)| *path == report.path)
        {
            None => {
                assert_eq!(report.error, None, "{}", report.path);
                assert_eq!(report.created, report.creates, "{}", report.path);
            }
            Some((path, permission, role)) => {
                let error = report.error.as_deref().unwrap_or_else(|| {
                    panic!("{path} worked: the runtime account holds more than it should")
                });
                assert!(error.contains("permission denied"), "{path}: {error}");
                assert!(error.contains(permission), "{path}: {error}");
                assert!(error.contains(role), "{path}: {error}");
                for (doc, text) in &docs {
                    assert!(text.contains(role), "{doc} does not name {role} for {path}");
                }
            }
        }
        // Nothing the operator paths were refused touched the seeded task: not run, not
        // deleted.
        assert_eq!(report.seeded.1, 0, "{}", report.path);
    }
    let last = reports.last().unwrap();
    assert_eq!(last.seeded.0, 1 + 1 + 1 + 2 * BATCH + 1 + BATCH);
}

/// The paths run with the grants of the module after one edit that takes a grant away:
/// `(file, from, to)` as [`module::broken`].
async fn reports_without(edit: (&str, &str, &str)) -> Vec<Report> {
    let files = module::broken(&[edit]);
    run_paths(&runtime_grants(&files)).await
}

fn report<'a>(reports: &'a [Report], path: &str) -> &'a Report {
    reports.iter().find(|report| report.path == path).unwrap()
}

const BULK_PATHS: [&str; 3] = [
    "enqueue_all: BatchCreateTasks, unnamed (FULL view), GetOperation",
    "enqueue_all de-duplicated: BatchCreateTasks, named, GetOperation",
    "cloud-tasks enqueue-batch",
];

const SINGLE_PATHS: [&str; 3] = [
    "backend upload: CreateTask, unnamed",
    "enqueue de-duplicated: CreateTask, named",
    "cloud-tasks enqueue --dedupe",
];

/// Without the custom role on the project, every batch is accepted but its operation cannot be
/// read: the tasks exist, and each is reported as possibly created, naming the permission and
/// the role. The single calls still work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_operation_reader_grant_batches_cannot_learn_their_outcome() {
    let reports = reports_without((
        "iam.tf",
        "member  = google_service_account.backend_runtime.member",
        "member  = google_service_account.task_invoker.member",
    ))
    .await;
    for path in BULK_PATHS {
        let report = report(&reports, path);
        let error = report.error.as_deref().expect(path);
        assert!(
            error.contains("cloudtasks.operations.get"),
            "{path}: {error}"
        );
        assert!(
            error.contains("cloudTasksOperationReader"),
            "{path}: {error}"
        );
        assert!(error.contains("may or may not exist"), "{path}: {error}");
        // The batches were accepted: Cloud Tasks holds their tasks.
        assert_eq!(report.created, report.creates, "{path}");
    }
    for path in SINGLE_PATHS {
        assert_eq!(report(&reports, path).error, None, "{path}");
    }
}

/// Without the enqueuer role on the queue nothing is created, and the error names the role.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_enqueuer_grant_nothing_is_created() {
    let reports = reports_without((
        "iam.tf",
        "role     = \"roles/cloudtasks.enqueuer\"",
        "role     = \"roles/cloudtasks.viewer\"",
    ))
    .await;
    for path in SINGLE_PATHS.into_iter().chain(BULK_PATHS) {
        let report = report(&reports, path);
        let error = report.error.as_deref().expect(path);
        assert!(error.contains("cloudtasks.tasks.create"), "{path}: {error}");
        assert!(
            error.contains("roles/cloudtasks.enqueuer"),
            "{path}: {error}"
        );
        assert_eq!(report.created, 0, "{path}");
    }
}

/// Without actAs on the invoker account no task with its OIDC token is created.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_act_as_on_the_invoker_nothing_is_created() {
    let reports = reports_without((
        "iam.tf",
        "service_account_id = google_service_account.task_invoker.name",
        "service_account_id = google_service_account.backend_runtime.name",
    ))
    .await;
    for path in SINGLE_PATHS.into_iter().chain(BULK_PATHS) {
        let report = report(&reports, path);
        let error = report.error.as_deref().expect(path);
        assert!(
            error.contains("iam.serviceAccounts.actAs"),
            "{path}: {error}"
        );
        assert!(
            error.contains("roles/iam.serviceAccountUser"),
            "{path}: {error}"
        );
        assert_eq!(report.created, 0, "{path}");
    }
}

/// GetOperation's resource is under the project, not the queue: `cloudtasks.operations.get`
/// granted on the queue does not reach it. The batch's tasks exist; each is reported as
/// possibly created, with the operation's permission and role named.
#[tokio::test]
async fn operations_get_on_the_queue_does_not_reach_the_operation() {
    let (server, client) = mock_and_client().await;
    server.grant(
        QUEUE_PATH,
        [
            "cloudtasks.tasks.create",
            "cloudtasks.tasks.fullView",
            "cloudtasks.operations.get",
        ],
    );
    server.grant(SERVICE_ACCOUNT, ["iam.serviceAccounts.actAs"]);
    server.set_operation_polls(1);
    let outcomes = client.enqueue_all(documents(3), BatchOptions::new()).await;
    for outcome in &outcomes {
        let error = outcome.as_ref().unwrap_err();
        assert!(error.is_permission_denied(), "{error}");
        assert!(error.task_may_exist(), "{error}");
        let message = error.to_string();
        assert!(
            message.contains(&format!(
                "GetOperation needs cloudtasks.operations.get on projects/{PROJECT}/locations/{LOCATION}/operations/"
            )),
            "{message}"
        );
    }
    assert_eq!(server.tasks().len(), 3);
    assert_eq!(server.get_operation_calls().len(), 1);
}
