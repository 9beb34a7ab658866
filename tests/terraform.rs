//! The Terraform rules in `infrastructure/policy/*.rego`, run with `regorus` over
//! `infrastructure/terraform/` parsed by `hcl-rs`.
//!
//! The input has the shape `conftest test --parser hcl2 --combine` gives the same policies: one
//! `{"path", "contents"}` per file, blocks as lists under their type and labels, and expressions
//! that are not literals as their source wrapped in `${...}`. The real module must pass; each rule
//! has a test that breaks the real module in one place and expects exactly that rule's message.

#[path = "common/terraform.rs"]
mod module;

use std::fs;

use module::{body_json, broken, module_files, module_json};
use serde_json::{Value, json};

const POLICY_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/infrastructure/policy");

/// The messages of every `deny` rule that fires, sorted.
fn denies(files: &[(String, String)]) -> Vec<String> {
    let input = module_json(files);
    let mut engine = regorus::Engine::new();
    for entry in fs::read_dir(POLICY_DIR).expect("the policy directory") {
        let path = entry.expect("a directory entry").path();
        if path.extension().is_some_and(|ext| ext == "rego") {
            engine
                .add_policy_from_file(&path)
                .unwrap_or_else(|e| panic!("loading {}: {e}", path.display()));
        }
    }
    engine.set_input(regorus::Value::from(Value::Array(input)));
    let deny = engine
        .eval_rule("data.main.deny".to_owned())
        .expect("data.main.deny evaluates");
    let mut messages: Vec<String> =
        serde_json::from_str(&deny.to_json_str().expect("a set")).expect("a set of strings");
    messages.sort();
    messages
}

#[track_caller]
fn assert_denied(edits: &[(&str, &str, &str)], expected: &[&str]) {
    let mut expected: Vec<String> = expected.iter().map(|m| (*m).to_owned()).collect();
    expected.sort();
    assert_eq!(denies(&broken(edits)), expected);
}

#[test]
fn module_passes_every_policy() {
    assert_eq!(denies(&module_files()), Vec::<String>::new());
}

#[test]
fn input_has_conftest_hcl2_shape() {
    let body = hcl::parse(
        r#"
resource "t" "n" {
  a = var.x
  b = "https://${var.name}-${data.p.this.number}.run.app"
  c = toset(["x"])
  d = { source = "s" }
  nested {
    e = 1
  }
  nested {
    e = 2
  }
}
locals {
  l = true
}
"#,
    )
    .expect("parses");
    assert_eq!(
        body_json(&body),
        json!({
            "resource": { "t": { "n": [{
                "a": "${var.x}",
                "b": "https://${var.name}-${data.p.this.number}.run.app",
                "c": "${toset([\"x\"])}",
                "d": { "source": "s" },
                "nested": [{ "e": 1 }, { "e": 2 }],
            }]}},
            "locals": [{ "l": true }],
        })
    );
}

#[test]
fn missing_queue_and_service_are_denied() {
    let mut files = module_files();
    files.retain(|(name, _)| name != "queue.tf" && name != "cloud_run.tf");
    assert_eq!(
        denies(&files),
        [
            "google_cloud_run_v2_service: none declared; declare the backend's service (cloud_run.tf)",
            "google_cloud_tasks_queue: none declared; declare the queue the backend enqueues to (queue.tf)",
        ]
    );
}

#[test]
fn timeout_of_exactly_the_dispatch_deadline_is_accepted() {
    assert_denied(
        &[(
            "variables.tf",
            "default     = \"900s\"",
            "default     = \"600s\"",
        )],
        &[],
    );
}

/// One test per case: the real module broken by `(file, from, to)` edits (see [`broken`]) must
/// be denied with exactly these messages.
macro_rules! denied {
    ($($(#[$doc:meta])* $name:ident: [$($edit:expr),* $(,)?] => [$($message:expr),* $(,)?];)*) => {$(
        $(#[$doc])*
        #[test]
        fn $name() {
            assert_denied(&[$($edit),*], &[$(&*$message),*]);
        }
    )*};
}

const RUN_ENQUEUER: &str = "google_cloud_run_v2_service.backend: its runtime account has no roles/cloudtasks.enqueuer on the queue in CLOUD_TASKS_QUEUE, so CreateTask is denied; add a google_cloud_tasks_queue_iam_member with name = google_cloud_tasks_queue.QUEUE.name and member = google_service_account.RUNTIME.member";
const RUN_ACT_AS: &str = "google_cloud_run_v2_service.backend: its runtime account has no roles/iam.serviceAccountUser on the account in CLOUD_RUN_SERVICE_ACCOUNT, so tasks with that OIDC account are refused; add a google_service_account_iam_member with service_account_id = google_service_account.INVOKER.name and member = google_service_account.RUNTIME.member";
const RUN_INVOKER: &str = "google_cloud_run_v2_service.backend: the account in CLOUD_RUN_SERVICE_ACCOUNT has no roles/run.invoker on this service, so every dispatch gets 403; add a google_cloud_run_v2_service_iam_member with name = google_cloud_run_v2_service.backend.name and member = google_service_account.INVOKER.member";

const RUN_OPERATIONS: &str = "google_cloud_run_v2_service.backend: its runtime account cannot read Cloud Tasks operations (cloudtasks.operations.get on the project), so a batch whose operation is not done at once fails; add a google_project_iam_custom_role with permissions = [\"cloudtasks.operations.get\"] and a google_project_iam_member with role = google_project_iam_custom_role.ROLE.id and member = google_service_account.RUNTIME.member";
const NO_OPT_IN: &str = "google_cloud_run_v2_service.backend: no env CLOUD_TASKS_OIDC_VERIFIED_BY_CLOUD_RUN = \"true\"; behind invoker IAM every task arrives with its token's signature removed by Cloud Run, and the backend refuses it without this setting";

fn broad(address: &str, role: &str) -> String {
    format!(
        "{address}: role {role} granted on the whole project; grant it on the one queue, service account or Cloud Run service that needs it, or use a narrower literal role"
    )
}

fn short(timeout: &str) -> String {
    format!(
        "google_cloud_run_v2_service.backend: request timeout {timeout} is shorter than the tasks' 600s dispatch deadline; set template.timeout (or its variable's default) to at least \"600s\" (unset is Cloud Run's 300s)"
    )
}

fn public(address: &str, principal: &str) -> String {
    format!(
        "{address}: {principal} makes it public; name the one service account that needs access instead"
    )
}

fn project_grant(name: &str, role: &str) -> String {
    format!(
        "resource \"google_project_iam_member\" \"{name}\" {{\n  project = var.project_id\n  role    = {role}\n  member  = google_service_account.backend_runtime.member\n}}\n"
    )
}

#[rustfmt::skip]
denied! {
    queue_without_retry_config: [("queue.tf", "retry_config {", "unused_retry_config {")]
        => ["google_cloud_tasks_queue.documents: no retry_config block; add one so the queue does not run on Cloud Tasks' defaults"];
    /// The real module takes its timeout from the variable's default.
    short_timeout_default: [("variables.tf", "default     = \"900s\"", "default     = \"599.5s\"")] => [short("599.5s")];
    short_literal_timeout: [("cloud_run.tf", "timeout = var.request_timeout", "timeout = \"300s\"")] => [short("300s")];
    missing_timeout_is_cloud_runs_300s: [("cloud_run.tf", "timeout = var.request_timeout", "")] => [short("300s")];
    unreadable_timeout: [("variables.tf", "default     = \"900s\"", "default     = \"15m\"")]
        => ["google_cloud_run_v2_service.backend: cannot read the request timeout 15m as seconds; write template.timeout (or its variable's default) as a duration such as \"900s\""];
    /// Behind invoker IAM every delivery would be refused.
    cloud_run_opt_in_missing: [("cloud_run.tf", "name  = \"CLOUD_TASKS_OIDC_VERIFIED_BY_CLOUD_RUN\"", "name  = \"UNUSED\"")] => [NO_OPT_IN];
    cloud_run_opt_in_false: [("cloud_run.tf", "value = \"true\"", "value = \"false\"")] => [NO_OPT_IN];
    /// Nothing would check the signatures it trusts.
    cloud_run_opt_in_without_invoker_iam: [("cloud_run.tf", "invoker_iam_disabled = false", "invoker_iam_disabled = true")]
        => ["google_cloud_run_v2_service.backend: invoker_iam_disabled lets anyone call the service; set it to false (the only invoker is the task_invoker grant)",
            "google_cloud_run_v2_service.backend: CLOUD_TASKS_OIDC_VERIFIED_BY_CLOUD_RUN is set on a service whose invoker IAM is disabled, so nothing checks the tokens' signatures and anyone could write one it accepts; turn invoker IAM on (invoker_iam_disabled = false) or remove the env"];
    emulator_issuer_on_cloud_run: [("cloud_run.tf", "name  = \"CLOUD_TASKS_OIDC_VERIFIED_BY_CLOUD_RUN\"\n        value = \"true\"\n      }", "name  = \"CLOUD_TASKS_OIDC_VERIFIED_BY_CLOUD_RUN\"\n        value = \"true\"\n      }\n      env {\n        name  = \"CLOUD_TASKS_OIDC_ISSUER\"\n        value = \"http://127.0.0.1:8123\"\n      }")]
        => ["google_cloud_run_v2_service.backend: env CLOUD_TASKS_OIDC_ISSUER names another token issuer than Google, which is for the local emulator; the backend refuses to start with it on Cloud Run; remove it"];
    missing_env_var: [("cloud_run.tf", "name  = \"GCP_LOCATION\"", "name  = \"LOCATION\"")]
        => ["google_cloud_run_v2_service.backend: no env GCP_LOCATION, which the backend reads at start-up; add an env block for it to the container"];
    service_url_read_from_the_service: [("cloud_run.tf", "service_url = \"https://${var.service_name}-${data.google_project.this.number}.${var.region}.run.app\"", "service_url = google_cloud_run_v2_service.backend.uri")]
        => ["google_cloud_run_v2_service.backend: CLOUD_RUN_SERVICE_URL is read from a Cloud Run service (${google_cloud_run_v2_service.backend.uri}), a cycle; build the deterministic https://SERVICE-PROJECT_NUMBER.REGION.run.app URL instead"];
    /// Running as the default account, the service holds neither of the runtime grants.
    default_compute_identity: [("cloud_run.tf", "service_account = google_service_account.backend_runtime.email", "")]
        => ["google_cloud_run_v2_service.backend: template.service_account is not the email of a declared google_service_account, so the service runs as the default compute account; set it to google_service_account.RUNTIME.email", RUN_ENQUEUER, RUN_ACT_AS];
    /// A literal email names no declared account, so neither of its grants can be shown.
    undeclared_oidc_account: [("cloud_run.tf", "value = google_service_account.task_invoker.email", "value = \"someone@example.com\"")]
        => ["google_cloud_run_v2_service.backend: CLOUD_RUN_SERVICE_ACCOUNT is not the email of a declared google_service_account, so its grants cannot be checked; set it to google_service_account.INVOKER.email", RUN_ACT_AS, RUN_INVOKER,
            "output \"cloud_run_service_account\": value ${google_service_account.task_invoker.email} differs from CLOUD_RUN_SERVICE_ACCOUNT of google_cloud_run_v2_service.backend; give both the same expression"];
    enqueuer_for_the_wrong_account: [("iam.tf", "member   = google_service_account.backend_runtime.member\n}\n\n#", "member   = google_service_account.task_invoker.member\n}\n\n#")] => [RUN_ENQUEUER];
    project_wide_enqueuer_instead_of_the_queue_grant: [("iam.tf", "\"google_cloud_tasks_queue_iam_member\"", "\"google_project_iam_member\"")]
        => [RUN_ENQUEUER, broad("google_project_iam_member.backend_enqueuer", "roles/cloudtasks.enqueuer")];
    act_as_on_the_wrong_account: [("iam.tf", "google_service_account.task_invoker.name", "google_service_account.backend_runtime.name")] => [RUN_ACT_AS];
    project_wide_act_as_instead_of_the_account_grant: [("iam.tf", "\"google_service_account_iam_member\"", "\"google_project_iam_binding\"")]
        => [RUN_ACT_AS, broad("google_project_iam_binding.backend_act_as_invoker", "roles/iam.serviceAccountUser")];
    invoker_on_another_service: [("iam.tf", "name     = google_cloud_run_v2_service.backend.name", "name     = google_cloud_run_v2_service.other.name")] => [RUN_INVOKER];
    /// What the Python project did: it works, but lets the account invoke every service.
    project_wide_invoker_instead_of_the_service_grant: [("iam.tf", "\"google_cloud_run_v2_service_iam_member\"", "\"google_project_iam_member\"")]
        => [RUN_INVOKER, broad("google_project_iam_member.run_invoker", "roles/run.invoker")];
    project_wide_token_creator_but_not_log_writer: [("extra.tf", "", &project_grant("tokens", "\"roles/iam.serviceAccountTokenCreator\"")), ("extra.tf", "", &project_grant("logs", "\"roles/logging.logWriter\""))]
        => [broad("google_project_iam_member.tokens", "roles/iam.serviceAccountTokenCreator")];
    project_wide_role_that_is_not_a_literal: [("extra.tf", "", &project_grant("roles", "var.role"))] => [broad("google_project_iam_member.roles", "${var.role}")];
    authoritative_project_policy: [("extra.tf", "", "resource \"google_project_iam_policy\" \"all\" {\n  policy_data = data.google_iam_policy.all.policy_data\n}\n")]
        => ["google_project_iam_policy.all: an authoritative IAM policy replaces every grant on the project and cannot be checked here; grant roles with *_iam_member on the one resource that needs them"];
    public_principals_in_members_lists_and_locals: [
        ("iam.tf", "member   = google_service_account.task_invoker.member", "member   = \"allUsers\""),
        ("extra.tf", "", "resource \"google_cloud_tasks_queue_iam_binding\" \"enqueuers\" {\n  members = [google_service_account.backend_runtime.member, \"allAuthenticatedUsers\"]\n}\n"),
        ("cloud_run.tf", "locals {\n", "locals {\n  anyone = concat([\"allUsers\"], [])\n"),
    ] => [
        public("resource.google_cloud_run_v2_service_iam_member.run_invoker.member", "allUsers"),
        public("resource.google_cloud_tasks_queue_iam_binding.enqueuers.members", "allAuthenticatedUsers"),
        public("locals.anyone", "allUsers"),
        RUN_INVOKER,
    ];
    operation_reader_for_the_wrong_account: [("iam.tf", "member  = google_service_account.backend_runtime.member", "member  = google_service_account.task_invoker.member")] => [RUN_OPERATIONS];
    /// A role of the module granted on the project may hold only permissions that reach no
    /// further than what they are for.
    operation_reader_role_holding_more: [("iam.tf", "permissions = [\"cloudtasks.operations.get\"]", "permissions = [\"cloudtasks.operations.get\", \"cloudtasks.tasks.delete\"]")]
        => [broad("google_project_iam_member.backend_operation_reader", "${google_project_iam_custom_role.operation_reader.id}")];
    operation_reader_role_not_declared: [("iam.tf", "role    = google_project_iam_custom_role.operation_reader.id", "role    = google_project_iam_custom_role.other.id")]
        => [RUN_OPERATIONS, broad("google_project_iam_member.backend_operation_reader", "${google_project_iam_custom_role.other.id}")];
    /// The custom role's `name` is the same reference as its `id`.
    operation_reader_by_name: [("iam.tf", "role    = google_project_iam_custom_role.operation_reader.id", "role    = google_project_iam_custom_role.operation_reader.name")] => [];
    /// Retries that stop before a crashed instance's claim expires leave its document
    /// unprocessed.
    retries_shorter_than_a_claim: [("variables.tf", "default     = \"3600s\"", "default     = \"0s\"")]
        => ["google_cloud_tasks_queue.documents: retry_config.max_retry_duration 0s ends retries before a crashed instance's 35-minute claim expires and one max_backoff (600s) passes, so that document is never processed; set it (or its variable's default) to at least \"2700s\", or max_attempts to -1"];
    /// Unlimited attempts never stop retrying.
    unlimited_attempts_without_a_retry_duration: [("variables.tf", "default     = \"3600s\"", "default     = \"0s\""), ("variables.tf", "unlimited.\"\n  type        = number\n  default     = 5\n", "unlimited.\"\n  type        = number\n  default     = -1\n")] => [];
    missing_output: [("outputs.tf", "output \"cloud_run_service_url\"", "output \"service_url\"")]
        => ["output \"cloud_run_service_url\": missing; add it with the value the Cloud Run service gets as CLOUD_RUN_SERVICE_URL"];
    output_that_differs_from_the_environment: [("outputs.tf", "google_service_account.task_invoker.email", "google_service_account.backend_runtime.email")]
        => ["output \"cloud_run_service_account\": value ${google_service_account.backend_runtime.email} differs from CLOUD_RUN_SERVICE_ACCOUNT of google_cloud_run_v2_service.backend; give both the same expression"];
    unpinned_provider: [("versions.tf", "version = \">= 6.12, < 8.0\"", "")]
        => ["terraform: required_version or the hashicorp/google version constraint is missing; pin both in versions.tf"];
    hard_coded_provider_region: [("versions.tf", "region  = var.region", "region  = \"us-central1\"")]
        => ["provider \"google\": project and region must come from var.project_id and var.region, so one module deploys where its variables say"];
    missing_api: [("apis.tf", "\"iam.googleapis.com\",", "")]
        => ["google_project_service: iam.googleapis.com is not enabled; add it to the required APIs (apis.tf)"];
    api_disabled_on_destroy: [("apis.tf", "disable_on_destroy = false", "disable_on_destroy = true")]
        => ["google_project_service.required: set disable_on_destroy = false; destroying this stack must not switch off APIs other workloads use"];
    /// Booleans need no validation.
    variables_without_description_type_or_validation: [("extra.tf", "", "variable \"bare\" {\n  description = \" \"\n}\nvariable \"unchecked\" {\n  description = \"N.\"\n  type = number\n}\nvariable \"flag\" {\n  description = \"F.\"\n  type = bool\n}\n")]
        => ["variable \"bare\": no description; say what it is for and where it ends up", "variable \"bare\": no type; declare one",
            "variable \"unchecked\": no validation; add a validation block with condition and error_message"];
    missing_required_variable: [("variables.tf", "variable \"container_image\"", "variable \"image\"")]
        => ["variable \"container_image\": missing; the backend's settings and the resources' names come from it"];
    other_queue_default: [("variables.tf", "default     = \"document-processing\"", "default     = \"documents\"")]
        => ["variable \"queue_name\": default must be \"document-processing\", the queue the backend and its docs name"];
}
