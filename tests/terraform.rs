//! Offline checks of the Terraform in `infrastructure/terraform/`.
//!
//! `terraform validate` needs the google provider, which CI cannot download. These tests parse
//! the module with `hcl-rs` instead and check the rules the configuration exists for: the queue,
//! the two service accounts, each IAM grant on the narrowest resource, nothing public or
//! project-wide, and a Cloud Run service that outlives the tasks' dispatch deadline and gets the
//! five settings the backend reads.
//!
//! Each rule is a function from the parsed module to the [`Violation`]s it finds. The tests run
//! them on the real module, which must be clean, and on small in-memory modules that each break
//! one rule, which must be reported.

use std::fs;
use std::path::{Path, PathBuf};

use hcl::expr::{Expression, ObjectKey, TraversalOperator};
use hcl::{Block, Body};

const MODULE_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/infrastructure/terraform");

/// The dispatch deadline the client sets on every task. Cloud Run must not time out sooner.
const DISPATCH_DEADLINE_SECS: f64 = 600.0;

/// Cloud Run's request timeout when `template.timeout` is not set.
const CLOUD_RUN_DEFAULT_TIMEOUT: &str = "300s";

/// The settings the backend reads from its environment, in the order `Settings` documents them.
const BACKEND_ENV: [&str; 5] = [
    "GCP_PROJECT_ID",
    "GCP_LOCATION",
    "CLOUD_TASKS_QUEUE",
    "CLOUD_RUN_SERVICE_URL",
    "CLOUD_RUN_SERVICE_ACCOUNT",
];

const ENQUEUER: &str = "roles/cloudtasks.enqueuer";
const SERVICE_ACCOUNT_USER: &str = "roles/iam.serviceAccountUser";
const INVOKER: &str = "roles/run.invoker";

/// Roles that must never be granted on a whole project, folder or organization: the ones this
/// flow needs (each belongs on one resource), the token creators, and broader roles that
/// contain their permissions.
const ROLES_NEVER_BROAD: [&str; 12] = [
    INVOKER,
    ENQUEUER,
    SERVICE_ACCOUNT_USER,
    "roles/iam.serviceAccountTokenCreator",
    "roles/iam.serviceAccountOpenIdTokenCreator",
    "roles/iam.serviceAccountAdmin",
    "roles/run.admin",
    "roles/run.developer",
    "roles/cloudtasks.admin",
    "roles/cloudtasks.queueAdmin",
    "roles/editor",
    "roles/owner",
];

const PUBLIC_PRINCIPALS: [&str; 2] = ["allUsers", "allAuthenticatedUsers"];

/// IAM resources whose grants apply to everything under a project, folder or organization.
const BROAD_IAM_PREFIXES: [&str; 3] = [
    "google_project_iam_",
    "google_folder_iam_",
    "google_organization_iam_",
];

const REQUIRED_APIS: [&str; 3] = [
    "cloudtasks.googleapis.com",
    "run.googleapis.com",
    "iam.googleapis.com",
];

#[derive(Debug, Clone, PartialEq)]
enum Violation {
    /// No resource of this type is declared.
    MissingResource(&'static str),
    QueueBlockMissing {
        queue: String,
        block: &'static str,
    },
    /// `template.service_account` is not the email of a declared service account, so the
    /// service would run as the project's default compute account.
    CloudRunWithoutRuntimeAccount,
    MissingEnv(&'static str),
    /// `CLOUD_RUN_SERVICE_ACCOUNT` is not the email of a declared service account.
    UnknownOidcAccount,
    /// `CLOUD_RUN_SERVICE_URL` refers to the Cloud Run service itself: a cycle.
    SelfReferencingServiceUrl(String),
    TimeoutShorterThanDispatchDeadline {
        timeout: String,
    },
    UnreadableTimeout(String),
    InvokerIamDisabled,
    /// No `roles/cloudtasks.enqueuer` for the runtime account on the backend's queue.
    MissingEnqueuerOnQueue,
    /// No `roles/iam.serviceAccountUser` for the runtime account on the OIDC account.
    MissingActAsOnOidcAccount,
    /// No `roles/run.invoker` for the OIDC account on the Cloud Run service.
    MissingInvokerOnService,
    BroadScopeGrant {
        resource: String,
        role: String,
    },
    PublicPrincipal {
        block: String,
        principal: &'static str,
    },
    MissingOutput(&'static str),
    OutputDiffersFromEnv(&'static str),
    MissingProviderConstraint,
    ProviderNotFromVariables,
    MissingApi(&'static str),
    ApiDisabledOnDestroy(String),
    VariableLacks {
        variable: String,
        what: &'static str,
    },
    VariableDefault {
        variable: &'static str,
        expected: &'static str,
    },
}

// ---------------------------------------------------------------------------------------------
// Reading the module
// ---------------------------------------------------------------------------------------------

/// Parses every `*.tf` file under `dir` into one body, as Terraform merges a module's files.
fn load_module(dir: &Path) -> Body {
    let mut files = Vec::new();
    collect_tf_files(dir, &mut files);
    files.sort();
    assert!(!files.is_empty(), "no *.tf files under {}", dir.display());
    let mut module = Vec::new();
    for file in files {
        let source =
            fs::read_to_string(&file).unwrap_or_else(|e| panic!("reading {}: {e}", file.display()));
        let body =
            hcl::parse(&source).unwrap_or_else(|e| panic!("parsing {}: {e}", file.display()));
        module.extend(body.into_inner());
    }
    Body(module)
}

fn collect_tf_files(dir: &Path, files: &mut Vec<PathBuf>) {
    let entries = fs::read_dir(dir).unwrap_or_else(|e| panic!("listing {}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            // Provider plugins and modules downloaded by `terraform init` are not ours.
            if path.file_name().is_some_and(|name| name != ".terraform") {
                collect_tf_files(&path, files);
            }
        } else if path.extension().is_some_and(|ext| ext == "tf") {
            files.push(path);
        }
    }
}

fn label(block: &Block, index: usize) -> Option<&str> {
    block.labels().get(index).map(|label| label.as_str())
}

/// Top-level blocks `ident "label0" ...`, e.g. `resource "google_cloud_tasks_queue" ...`.
fn top_blocks<'a>(module: &'a Body, ident: &str, label0: &str) -> impl Iterator<Item = &'a Block> {
    module
        .blocks()
        .filter(move |b| b.identifier() == ident && label(b, 0) == Some(label0))
}

/// `(name, body)` of every resource of type `kind`.
fn resources<'a>(module: &'a Body, kind: &'a str) -> impl Iterator<Item = (&'a str, &'a Body)> {
    top_blocks(module, "resource", kind).map(|b| (label(b, 1).unwrap_or_default(), b.body()))
}

fn attr<'a>(body: &'a Body, key: &str) -> Option<&'a Expression> {
    body.attributes().find(|a| a.key() == key).map(|a| a.expr())
}

fn nested<'a>(body: &'a Body, ident: &'a str) -> impl Iterator<Item = &'a Body> + 'a {
    body.blocks()
        .filter(move |b| b.identifier() == ident)
        .map(Block::body)
}

fn first_nested<'a>(body: &'a Body, ident: &'a str) -> Option<&'a Body> {
    nested(body, ident).next()
}

/// The source text of a literal, a template or a plain reference: `"900s"` gives `900s`,
/// `"serviceAccount:${a.b.c}"` gives `serviceAccount:${a.b.c}`, and `a.b.c` gives `a.b.c`.
/// Anything else (function calls, conditionals, indexing) gives `None`.
fn text(expr: &Expression) -> Option<String> {
    match expr {
        Expression::String(s) => Some(s.clone()),
        Expression::TemplateExpr(template) => Some(template.to_string()),
        Expression::Variable(var) => Some(var.as_str().to_owned()),
        Expression::Traversal(traversal) => {
            let mut path = text(&traversal.expr)?;
            for op in &traversal.operators {
                match op {
                    TraversalOperator::GetAttr(name) => {
                        path.push('.');
                        path.push_str(name.as_str());
                    }
                    _ => return None,
                }
            }
            Some(path)
        }
        Expression::Parenthesis(inner) => text(inner),
        _ => None,
    }
}

fn attr_text(body: &Body, key: &str) -> Option<String> {
    attr(body, key).and_then(text)
}

/// Follows `var.NAME` to the variable's default and `local.NAME` to the local's value, so a
/// rule sees the value Terraform would use when nothing is overridden.
fn resolve<'a>(module: &'a Body, mut expr: &'a Expression) -> Option<&'a Expression> {
    // A bound on the chain, as locals may (wrongly) refer to each other in a loop.
    for _ in 0..16 {
        let Some(reference) = text(expr) else {
            return Some(expr);
        };
        if let Some(name) = reference.strip_prefix("var.") {
            let variable = top_blocks(module, "variable", name).next()?;
            expr = attr(variable.body(), "default")?;
        } else if let Some(name) = reference.strip_prefix("local.") {
            expr = module
                .blocks()
                .filter(|b| b.identifier() == "locals")
                .find_map(|b| attr(b.body(), name))?;
        } else {
            return Some(expr);
        }
    }
    None
}

/// The resource name in a reference `KIND.NAME.ATTRIBUTE`, for any of the given attributes.
fn referenced<'a>(reference: &'a str, kind: &str, attributes: &[&str]) -> Option<&'a str> {
    let rest = reference.strip_prefix(kind)?.strip_prefix('.')?;
    let (name, attribute) = rest.split_once('.')?;
    attributes.contains(&attribute).then_some(name)
}

fn referenced_in(expr: Option<&Expression>, kind: &str, attributes: &[&str]) -> Option<String> {
    let reference = text(expr?)?;
    referenced(&reference, kind, attributes).map(str::to_owned)
}

/// The `google_service_account` an IAM `member` names, written either as
/// `google_service_account.NAME.member` or as `"serviceAccount:${google_service_account.NAME.email}"`.
fn member_account(member: Option<&Expression>) -> Option<String> {
    let member = text(member?)?;
    if let Some(name) = referenced(&member, "google_service_account", &["member"]) {
        return Some(name.to_owned());
    }
    let email = member
        .strip_prefix("serviceAccount:${")?
        .strip_suffix('}')?;
    referenced(email, "google_service_account", &["email"]).map(str::to_owned)
}

/// Seconds in a protobuf duration such as `"900s"` or `"3.5s"`; `None` for anything else.
fn duration_secs(duration: &str) -> Option<f64> {
    let number = duration.strip_suffix('s')?;
    let (whole, fraction) = match number.split_once('.') {
        Some((whole, fraction)) if (1..=9).contains(&fraction.len()) => (whole, fraction),
        Some(_) => return None,
        None => (number, ""),
    };
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty() || !digits(whole) || !digits(fraction) {
        return None;
    }
    number.parse().ok()
}

/// `(name, value)` of each `env` block of each container in `template`.
fn env_vars(template: &Body) -> Vec<(String, Option<&Expression>)> {
    nested(template, "containers")
        .flat_map(|container| nested(container, "env"))
        .filter_map(|env| Some((attr_text(env, "name")?, attr(env, "value"))))
        .collect()
}

fn env_value<'a>(template: &'a Body, name: &str) -> Option<&'a Expression> {
    env_vars(template)
        .into_iter()
        .find(|(n, _)| n == name)
        .and_then(|(_, value)| value)
}

// ---------------------------------------------------------------------------------------------
// Rules for the queue, the accounts, the grants, Cloud Run and the outputs
// ---------------------------------------------------------------------------------------------

/// Every rule about the resources and grants; empty when the module is sound.
fn check(module: &Body) -> Vec<Violation> {
    let mut violations = check_queue(module);
    violations.extend(check_cloud_run(module));
    violations.extend(check_grants(module));
    violations.extend(check_no_broad_grants(module));
    violations.extend(check_no_public_principals(module));
    violations.extend(check_outputs(module));
    violations
}

/// A queue with explicit rate limits, retries and dispatch logging.
fn check_queue(module: &Body) -> Vec<Violation> {
    let mut violations = Vec::new();
    let mut queues = resources(module, "google_cloud_tasks_queue").peekable();
    if queues.peek().is_none() {
        violations.push(Violation::MissingResource("google_cloud_tasks_queue"));
    }
    for (name, queue) in queues {
        for block in ["rate_limits", "retry_config", "stackdriver_logging_config"] {
            if first_nested(queue, block).is_none() {
                violations.push(Violation::QueueBlockMissing {
                    queue: name.to_owned(),
                    block,
                });
            }
        }
    }
    violations
}

/// The backend runs as a declared account, cannot be invoked without IAM, outlives the
/// dispatch deadline, and gets the settings it reads, its own URL without a cycle.
fn check_cloud_run(module: &Body) -> Vec<Violation> {
    let mut violations = Vec::new();
    let mut services = resources(module, "google_cloud_run_v2_service").peekable();
    if services.peek().is_none() {
        violations.push(Violation::MissingResource("google_cloud_run_v2_service"));
    }
    for (_, service) in services {
        if let Some(disabled) = attr(service, "invoker_iam_disabled")
            && resolve(module, disabled) != Some(&Expression::Bool(false))
        {
            violations.push(Violation::InvokerIamDisabled);
        }
        let Some(template) = first_nested(service, "template") else {
            violations.push(Violation::CloudRunWithoutRuntimeAccount);
            violations.extend(BACKEND_ENV.map(Violation::MissingEnv));
            continue;
        };
        if runtime_account(template).is_none() {
            violations.push(Violation::CloudRunWithoutRuntimeAccount);
        }
        violations.extend(check_timeout(module, template));
        for name in BACKEND_ENV {
            if env_value(template, name).is_none() {
                violations.push(Violation::MissingEnv(name));
            }
        }
        if env_value(template, "CLOUD_RUN_SERVICE_ACCOUNT").is_some()
            && oidc_account(template).is_none()
        {
            violations.push(Violation::UnknownOidcAccount);
        }
        if let Some(url) = env_value(template, "CLOUD_RUN_SERVICE_URL") {
            let resolved = resolve(module, url).and_then(text).unwrap_or_default();
            if resolved.contains("google_cloud_run_v2_service.") {
                violations.push(Violation::SelfReferencingServiceUrl(resolved));
            }
        }
    }
    violations
}

fn check_timeout(module: &Body, template: &Body) -> Option<Violation> {
    let timeout = match attr(template, "timeout") {
        None => CLOUD_RUN_DEFAULT_TIMEOUT.to_owned(),
        Some(expr) => match resolve(module, expr).and_then(text) {
            Some(timeout) => timeout,
            None => return Some(Violation::UnreadableTimeout(format!("{expr:?}"))),
        },
    };
    match duration_secs(&timeout) {
        None => Some(Violation::UnreadableTimeout(timeout)),
        Some(secs) if secs < DISPATCH_DEADLINE_SECS => {
            Some(Violation::TimeoutShorterThanDispatchDeadline { timeout })
        }
        Some(_) => None,
    }
}

/// The `google_service_account` the service runs as.
fn runtime_account(template: &Body) -> Option<String> {
    referenced_in(
        attr(template, "service_account"),
        "google_service_account",
        &["email"],
    )
}

/// The `google_service_account` named in the tasks' OIDC token.
fn oidc_account(template: &Body) -> Option<String> {
    referenced_in(
        env_value(template, "CLOUD_RUN_SERVICE_ACCOUNT"),
        "google_service_account",
        &["email"],
    )
}

fn has_role(grant: &Body, role: &str) -> bool {
    attr_text(grant, "role").as_deref() == Some(role)
}

/// The three grants the flow needs, each on the one resource it is about:
/// enqueuer on the queue, actAs on the OIDC account, invoker on the service.
fn check_grants(module: &Body) -> Vec<Violation> {
    let mut violations = Vec::new();
    for (service_name, service) in resources(module, "google_cloud_run_v2_service") {
        let template = first_nested(service, "template");
        let runtime = template.and_then(runtime_account);
        let oidc = template.and_then(oidc_account);
        let queue = template.and_then(|t| {
            referenced_in(
                env_value(t, "CLOUD_TASKS_QUEUE"),
                "google_cloud_tasks_queue",
                &["name"],
            )
        });

        let enqueuer = resources(module, "google_cloud_tasks_queue_iam_member").any(|(_, g)| {
            has_role(g, ENQUEUER)
                && queue.is_some()
                && referenced_in(attr(g, "name"), "google_cloud_tasks_queue", &["name", "id"])
                    == queue
                && runtime.is_some()
                && member_account(attr(g, "member")) == runtime
        });
        if !enqueuer {
            violations.push(Violation::MissingEnqueuerOnQueue);
        }

        let act_as = resources(module, "google_service_account_iam_member").any(|(_, g)| {
            has_role(g, SERVICE_ACCOUNT_USER)
                && oidc.is_some()
                && referenced_in(
                    attr(g, "service_account_id"),
                    "google_service_account",
                    &["name", "id"],
                ) == oidc
                && runtime.is_some()
                && member_account(attr(g, "member")) == runtime
        });
        if !act_as {
            violations.push(Violation::MissingActAsOnOidcAccount);
        }

        let invoker = resources(module, "google_cloud_run_v2_service_iam_member").any(|(_, g)| {
            has_role(g, INVOKER)
                && referenced_in(
                    attr(g, "name"),
                    "google_cloud_run_v2_service",
                    &["name", "id"],
                )
                .as_deref()
                    == Some(service_name)
                && oidc.is_some()
                && member_account(attr(g, "member")) == oidc
        });
        if !invoker {
            violations.push(Violation::MissingInvokerOnService);
        }
    }
    violations
}

/// No project-, folder- or organization-wide grant of a role this flow must keep narrow, and no
/// authoritative policy at those levels (its bindings cannot be checked here).
fn check_no_broad_grants(module: &Body) -> Vec<Violation> {
    let mut violations = Vec::new();
    for block in module.blocks().filter(|b| b.identifier() == "resource") {
        let (Some(kind), Some(name)) = (label(block, 0), label(block, 1)) else {
            continue;
        };
        if !BROAD_IAM_PREFIXES
            .iter()
            .any(|prefix| kind.starts_with(prefix))
        {
            continue;
        }
        let resource = format!("{kind}.{name}");
        if kind.ends_with("_iam_policy") {
            violations.push(Violation::BroadScopeGrant {
                resource,
                role: "(authoritative policy)".to_owned(),
            });
        } else if kind.ends_with("_iam_member") || kind.ends_with("_iam_binding") {
            // A role that is not a literal (for_each, a variable) cannot be shown to be harmless.
            match attr(block.body(), "role").and_then(text) {
                Some(role)
                    if !role.starts_with("roles/")
                        || ROLES_NEVER_BROAD.contains(&role.as_str()) =>
                {
                    violations.push(Violation::BroadScopeGrant { resource, role });
                }
                Some(_) => {}
                None => violations.push(Violation::BroadScopeGrant {
                    resource,
                    role: "(not a literal)".to_owned(),
                }),
            }
        }
    }
    violations
}

/// No `allUsers` or `allAuthenticatedUsers` anywhere: in members, member lists, locals or
/// variable defaults that a member could come from.
fn check_no_public_principals(module: &Body) -> Vec<Violation> {
    let mut violations = Vec::new();
    for block in module.blocks() {
        let source = hcl::format::to_string(block.body()).expect("a parsed body formats");
        for principal in PUBLIC_PRINCIPALS {
            if source.contains(&format!("\"{principal}\"")) {
                let name = std::iter::once(block.identifier())
                    .chain(block.labels().iter().map(|l| l.as_str()))
                    .collect::<Vec<_>>()
                    .join(" ");
                violations.push(Violation::PublicPrincipal {
                    block: name,
                    principal,
                });
            }
        }
    }
    violations
}

/// One output per backend setting, named after it in lower case, with the value the service's
/// environment gets.
fn check_outputs(module: &Body) -> Vec<Violation> {
    let mut violations = Vec::new();
    let templates: Vec<&Body> = resources(module, "google_cloud_run_v2_service")
        .filter_map(|(_, service)| first_nested(service, "template"))
        .collect();
    for name in BACKEND_ENV {
        let Some(output) = top_blocks(module, "output", &name.to_lowercase()).next() else {
            violations.push(Violation::MissingOutput(name));
            continue;
        };
        let output_value = attr(output.body(), "value").and_then(text);
        for template in &templates {
            if let Some(env) = env_value(template, name)
                && text(env) != output_value
            {
                violations.push(Violation::OutputDiffersFromEnv(name));
            }
        }
    }
    violations
}

// ---------------------------------------------------------------------------------------------
// Rules for the module's conventions: versions, provider, APIs, variables
// ---------------------------------------------------------------------------------------------

fn check_conventions(module: &Body) -> Vec<Violation> {
    let mut violations = check_versions(module);
    violations.extend(check_apis(module));
    violations.extend(check_variables(module));
    violations
}

/// Terraform and `hashicorp/google` versions are constrained; the provider takes the project
/// and region from variables.
fn check_versions(module: &Body) -> Vec<Violation> {
    let mut violations = Vec::new();
    let constrained = module
        .blocks()
        .filter(|b| b.identifier() == "terraform")
        .any(|terraform| {
            let google = first_nested(terraform.body(), "required_providers")
                .and_then(|p| attr(p, "google"));
            let Some(Expression::Object(google)) = google else {
                return false;
            };
            let field = |key: &str| {
                google.iter().find_map(|(k, v)| match k {
                    ObjectKey::Identifier(id) if id.as_str() == key => text(v),
                    _ => None,
                })
            };
            attr(terraform.body(), "required_version").is_some()
                && field("source").as_deref() == Some("hashicorp/google")
                && field("version").is_some_and(|v| !v.is_empty())
        });
    if !constrained {
        violations.push(Violation::MissingProviderConstraint);
    }
    let from_variables = top_blocks(module, "provider", "google").any(|provider| {
        attr_text(provider.body(), "project").as_deref() == Some("var.project_id")
            && attr_text(provider.body(), "region").as_deref() == Some("var.region")
    });
    if !from_variables {
        violations.push(Violation::ProviderNotFromVariables);
    }
    violations
}

/// The services of `google_project_service` resources, literal or from a literal `for_each`.
fn enabled_apis(api: &Body) -> Vec<String> {
    let service = attr_text(api, "service");
    if service.as_deref().is_some_and(|s| !s.starts_with("each.")) {
        return service.into_iter().collect();
    }
    let mut for_each = attr(api, "for_each");
    if let Some(Expression::FuncCall(call)) = for_each
        && call.name.name.as_str() == "toset"
    {
        for_each = call.args.first();
    }
    match for_each {
        Some(Expression::Array(items)) => items.iter().filter_map(text).collect(),
        _ => Vec::new(),
    }
}

/// The APIs the module uses are enabled, and stay enabled on destroy.
fn check_apis(module: &Body) -> Vec<Violation> {
    let mut violations = Vec::new();
    let mut enabled = Vec::new();
    for (name, api) in resources(module, "google_project_service") {
        enabled.extend(enabled_apis(api));
        if attr(api, "disable_on_destroy") != Some(&Expression::Bool(false)) {
            violations.push(Violation::ApiDisabledOnDestroy(name.to_owned()));
        }
    }
    for api in REQUIRED_APIS {
        if !enabled.iter().any(|e| e == api) {
            violations.push(Violation::MissingApi(api));
        }
    }
    violations
}

/// Every variable is described and typed, every non-boolean one validated, the settings the
/// issue names exist, and the queue is called `document-processing` unless overridden.
fn check_variables(module: &Body) -> Vec<Violation> {
    let mut violations = Vec::new();
    let lacks = |variable: &str, what| Violation::VariableLacks {
        variable: variable.to_owned(),
        what,
    };
    for variable in module.blocks().filter(|b| b.identifier() == "variable") {
        let name = label(variable, 0).unwrap_or_default();
        let body = variable.body();
        if attr_text(body, "description").is_none_or(|d| d.trim().is_empty()) {
            violations.push(lacks(name, "description"));
        }
        let Some(kind) = attr(body, "type") else {
            violations.push(lacks(name, "type"));
            continue;
        };
        let validated = nested(body, "validation")
            .any(|v| attr(v, "condition").is_some() && attr(v, "error_message").is_some());
        if text(kind).as_deref() != Some("bool") && !validated {
            violations.push(lacks(name, "validation"));
        }
    }
    for name in [
        "project_id",
        "region",
        "queue_name",
        "service_name",
        "container_image",
    ] {
        if top_blocks(module, "variable", name).next().is_none() {
            violations.push(lacks(name, "declaration"));
        }
    }
    let queue_default = top_blocks(module, "variable", "queue_name")
        .next()
        .and_then(|v| attr_text(v.body(), "default"));
    if queue_default.as_deref() != Some("document-processing") {
        violations.push(Violation::VariableDefault {
            variable: "queue_name",
            expected: "document-processing",
        });
    }
    violations
}

// ---------------------------------------------------------------------------------------------
// The real module
// ---------------------------------------------------------------------------------------------

fn module() -> Body {
    load_module(Path::new(MODULE_DIR))
}

fn assert_clean(violations: &[Violation]) {
    let listed: Vec<String> = violations.iter().map(|v| format!("{v:?}")).collect();
    assert!(violations.is_empty(), "violations:\n{}", listed.join("\n"));
}

#[test]
fn module_keeps_every_resource_and_grant_rule() {
    assert_clean(&check(&module()));
}

#[test]
fn module_keeps_its_conventions() {
    assert_clean(&check_conventions(&module()));
}

#[test]
fn module_grants_invoker_through_the_run_invoker_resource() {
    let module = module();
    let grant = resources(&module, "google_cloud_run_v2_service_iam_member")
        .find(|(name, _)| *name == "run_invoker")
        .map(|(_, grant)| grant)
        .expect("google_cloud_run_v2_service_iam_member.run_invoker is declared");
    assert!(has_role(grant, INVOKER));
}

#[test]
fn module_uses_a_dedicated_invoker_account() {
    let module = module();
    let (_, service) = resources(&module, "google_cloud_run_v2_service")
        .next()
        .expect("a Cloud Run service");
    let template = first_nested(service, "template").expect("a template");
    let runtime = runtime_account(template).expect("a runtime account");
    let oidc = oidc_account(template).expect("an OIDC account");
    assert_ne!(runtime, oidc);
}

#[test]
fn module_timeout_resolves_through_its_variable() {
    let module = module();
    let (_, service) = resources(&module, "google_cloud_run_v2_service")
        .next()
        .expect("a Cloud Run service");
    let template = first_nested(service, "template").expect("a template");
    let timeout = attr(template, "timeout").expect("an explicit timeout");
    let resolved = resolve(&module, timeout)
        .and_then(text)
        .expect("a literal duration");
    let secs = duration_secs(&resolved).expect("a readable duration");
    assert!(secs >= DISPATCH_DEADLINE_SECS, "{resolved} < 600s");
}

#[test]
fn module_service_url_is_the_deterministic_run_app_url() {
    let module = module();
    let (_, service) = resources(&module, "google_cloud_run_v2_service")
        .next()
        .expect("a Cloud Run service");
    let template = first_nested(service, "template").expect("a template");
    let url = env_value(template, "CLOUD_RUN_SERVICE_URL").expect("CLOUD_RUN_SERVICE_URL");
    let url = resolve(&module, url).and_then(text).expect("a template");
    assert_eq!(
        url,
        "https://${var.service_name}-${data.google_project.this.number}.${var.region}.run.app"
    );
}

// ---------------------------------------------------------------------------------------------
// Small modules, each breaking one rule
// ---------------------------------------------------------------------------------------------

/// A minimal module that keeps every rule of [`check`]. Each negative test changes one thing.
const VALID: &str = r#"
locals {
  service_url = "https://backend-${data.google_project.this.number}.europe-west1.run.app"
}

resource "google_cloud_tasks_queue" "documents" {
  name     = "document-processing"
  location = "europe-west1"
  rate_limits {
    max_dispatches_per_second = 1
  }
  retry_config {
    max_attempts = 5
  }
  stackdriver_logging_config {
    sampling_ratio = 1
  }
}

resource "google_service_account" "runtime" {
  account_id = "backend-runtime"
}

resource "google_service_account" "invoker" {
  account_id = "tasks-invoker"
}

resource "google_cloud_tasks_queue_iam_member" "enqueuer" {
  name   = google_cloud_tasks_queue.documents.name
  role   = "roles/cloudtasks.enqueuer"
  member = google_service_account.runtime.member
}

resource "google_service_account_iam_member" "act_as" {
  service_account_id = google_service_account.invoker.name
  role               = "roles/iam.serviceAccountUser"
  member             = "serviceAccount:${google_service_account.runtime.email}"
}

resource "google_cloud_run_v2_service" "backend" {
  name     = "backend"
  location = "europe-west1"
  template {
    service_account = google_service_account.runtime.email
    timeout         = "900s"
    containers {
      image = "backend:1"
      env {
        name  = "GCP_PROJECT_ID"
        value = "my-project"
      }
      env {
        name  = "GCP_LOCATION"
        value = google_cloud_tasks_queue.documents.location
      }
      env {
        name  = "CLOUD_TASKS_QUEUE"
        value = google_cloud_tasks_queue.documents.name
      }
      env {
        name  = "CLOUD_RUN_SERVICE_URL"
        value = local.service_url
      }
      env {
        name  = "CLOUD_RUN_SERVICE_ACCOUNT"
        value = google_service_account.invoker.email
      }
    }
  }
}

resource "google_cloud_run_v2_service_iam_member" "run_invoker" {
  name   = google_cloud_run_v2_service.backend.name
  role   = "roles/run.invoker"
  member = google_service_account.invoker.member
}

output "gcp_project_id" {
  value = "my-project"
}
output "gcp_location" {
  value = google_cloud_tasks_queue.documents.location
}
output "cloud_tasks_queue" {
  value = google_cloud_tasks_queue.documents.name
}
output "cloud_run_service_url" {
  value = local.service_url
}
output "cloud_run_service_account" {
  value = google_service_account.invoker.email
}
"#;

fn violations(source: &str) -> Vec<Violation> {
    check(&hcl::parse(source).expect("the fixture parses"))
}

/// [`VALID`] with `from`, which must occur exactly once, replaced by `to`.
fn edited(from: &str, to: &str) -> String {
    assert_eq!(
        VALID.matches(from).count(),
        1,
        "the edit must hit once: {from}"
    );
    VALID.replacen(from, to, 1)
}

/// [`VALID`] without the top-level block that starts with `header`.
fn without_block(header: &str) -> String {
    assert_eq!(
        VALID.matches(header).count(),
        1,
        "the block must exist once: {header}"
    );
    let start = VALID.find(header).expect("counted above");
    let end = start
        + VALID[start..]
            .find("\n}\n")
            .expect("blocks end with a lone brace")
        + 3;
    format!("{}{}", &VALID[..start], &VALID[end..])
}

fn with_extra(extra: &str) -> String {
    format!("{VALID}\n{extra}")
}

fn broad(resource: &str, role: &str) -> Violation {
    Violation::BroadScopeGrant {
        resource: resource.to_owned(),
        role: role.to_owned(),
    }
}

#[test]
fn fixture_keeps_every_rule() {
    assert_clean(&violations(VALID));
}

#[test]
fn project_wide_invoker_is_reported() {
    let source = with_extra(
        r#"
resource "google_project_iam_member" "invoker" {
  project = "my-project"
  role    = "roles/run.invoker"
  member  = google_service_account.invoker.member
}
"#,
    );
    assert_eq!(
        violations(&source),
        [broad("google_project_iam_member.invoker", INVOKER)]
    );
}

#[test]
fn project_wide_invoker_instead_of_the_service_grant_is_reported_twice() {
    // What the Python project did: it works, but lets the account invoke every service.
    let source = format!(
        "{}{}",
        without_block(r#"resource "google_cloud_run_v2_service_iam_member" "run_invoker""#),
        r#"
resource "google_project_iam_binding" "invoker" {
  project = "my-project"
  role    = "roles/run.invoker"
  members = [google_service_account.invoker.member]
}
"#
    );
    assert_eq!(
        violations(&source),
        [
            Violation::MissingInvokerOnService,
            broad("google_project_iam_binding.invoker", INVOKER),
        ]
    );
}

#[test]
fn all_users_member_is_reported() {
    let source = with_extra(
        r#"
resource "google_cloud_run_v2_service_iam_member" "public" {
  name   = google_cloud_run_v2_service.backend.name
  role   = "roles/run.invoker"
  member = "allUsers"
}
"#,
    );
    assert_eq!(
        violations(&source),
        [Violation::PublicPrincipal {
            block: "resource google_cloud_run_v2_service_iam_member public".to_owned(),
            principal: "allUsers",
        }]
    );
}

#[test]
fn all_authenticated_users_in_a_member_list_is_reported() {
    let source = with_extra(
        r#"
resource "google_cloud_tasks_queue_iam_binding" "enqueuers" {
  name    = google_cloud_tasks_queue.documents.name
  role    = "roles/cloudtasks.enqueuer"
  members = [google_service_account.runtime.member, "allAuthenticatedUsers"]
}
"#,
    );
    assert_eq!(
        violations(&source),
        [Violation::PublicPrincipal {
            block: "resource google_cloud_tasks_queue_iam_binding enqueuers".to_owned(),
            principal: "allAuthenticatedUsers",
        }]
    );
}

#[test]
fn public_principal_hidden_in_a_local_is_reported() {
    let source = edited("locals {\n", "locals {\n  anyone = \"allUsers\"\n");
    assert_eq!(
        violations(&source),
        [Violation::PublicPrincipal {
            block: "locals".to_owned(),
            principal: "allUsers",
        }]
    );
}

#[test]
fn missing_act_as_grant_is_reported() {
    let source = without_block(r#"resource "google_service_account_iam_member" "act_as""#);
    assert_eq!(violations(&source), [Violation::MissingActAsOnOidcAccount]);
}

#[test]
fn act_as_on_the_wrong_account_is_reported() {
    let source = edited(
        "service_account_id = google_service_account.invoker.name",
        "service_account_id = google_service_account.runtime.name",
    );
    assert_eq!(violations(&source), [Violation::MissingActAsOnOidcAccount]);
}

#[test]
fn project_wide_act_as_instead_of_the_account_grant_is_reported_twice() {
    let source = format!(
        "{}{}",
        without_block(r#"resource "google_service_account_iam_member" "act_as""#),
        r#"
resource "google_project_iam_member" "act_as" {
  project = "my-project"
  role    = "roles/iam.serviceAccountUser"
  member  = google_service_account.runtime.member
}
"#
    );
    assert_eq!(
        violations(&source),
        [
            Violation::MissingActAsOnOidcAccount,
            broad("google_project_iam_member.act_as", SERVICE_ACCOUNT_USER),
        ]
    );
}

#[test]
fn timeout_shorter_than_the_dispatch_deadline_is_reported() {
    let source = edited(r#"timeout         = "900s""#, r#"timeout         = "300s""#);
    assert_eq!(
        violations(&source),
        [Violation::TimeoutShorterThanDispatchDeadline {
            timeout: "300s".to_owned()
        }]
    );
}

#[test]
fn missing_timeout_means_cloud_run_default_and_is_reported() {
    let source = edited("    timeout         = \"900s\"\n", "");
    assert_eq!(
        violations(&source),
        [Violation::TimeoutShorterThanDispatchDeadline {
            timeout: CLOUD_RUN_DEFAULT_TIMEOUT.to_owned()
        }]
    );
}

#[test]
fn timeout_equal_to_the_dispatch_deadline_is_accepted() {
    let source = edited(r#"timeout         = "900s""#, r#"timeout         = "600s""#);
    assert_clean(&violations(&source));
}

#[test]
fn short_timeout_from_a_variable_default_is_reported() {
    let source = format!(
        "{}\nvariable \"request_timeout\" {{\n  default = \"599.5s\"\n}}\n",
        edited(
            r#"timeout         = "900s""#,
            "timeout         = var.request_timeout"
        )
    );
    assert_eq!(
        violations(&source),
        [Violation::TimeoutShorterThanDispatchDeadline {
            timeout: "599.5s".to_owned()
        }]
    );
}

#[test]
fn unreadable_timeout_is_reported() {
    let source = edited(r#"timeout         = "900s""#, r#"timeout         = "15m""#);
    assert_eq!(
        violations(&source),
        [Violation::UnreadableTimeout("15m".to_owned())]
    );
}

#[test]
fn project_wide_enqueuer_instead_of_the_queue_grant_is_reported_twice() {
    let source = format!(
        "{}{}",
        without_block(r#"resource "google_cloud_tasks_queue_iam_member" "enqueuer""#),
        r#"
resource "google_project_iam_member" "enqueuer" {
  project = "my-project"
  role    = "roles/cloudtasks.enqueuer"
  member  = google_service_account.runtime.member
}
"#
    );
    assert_eq!(
        violations(&source),
        [
            Violation::MissingEnqueuerOnQueue,
            broad("google_project_iam_member.enqueuer", ENQUEUER),
        ]
    );
}

#[test]
fn enqueuer_for_the_wrong_account_is_reported() {
    let source = edited(
        "  member = google_service_account.runtime.member\n",
        "  member = google_service_account.invoker.member\n",
    );
    assert_eq!(violations(&source), [Violation::MissingEnqueuerOnQueue]);
}

#[test]
fn project_wide_token_creator_is_reported() {
    let source = with_extra(
        r#"
resource "google_project_iam_member" "tokens" {
  project = "my-project"
  role    = "roles/iam.serviceAccountTokenCreator"
  member  = google_service_account.runtime.member
}
"#,
    );
    assert_eq!(
        violations(&source),
        [broad(
            "google_project_iam_member.tokens",
            "roles/iam.serviceAccountTokenCreator"
        )]
    );
}

#[test]
fn project_wide_role_that_is_not_a_literal_is_reported() {
    let source = with_extra(
        r#"
resource "google_project_iam_member" "roles" {
  for_each = toset(["roles/logging.logWriter", "roles/run.invoker"])
  project  = "my-project"
  role     = each.value
  member   = google_service_account.runtime.member
}
"#,
    );
    assert_eq!(
        violations(&source),
        [broad("google_project_iam_member.roles", "each.value")]
    );
}

#[test]
fn harmless_project_wide_role_is_accepted() {
    let source = with_extra(
        r#"
resource "google_project_iam_member" "logs" {
  project = "my-project"
  role    = "roles/logging.logWriter"
  member  = google_service_account.runtime.member
}
"#,
    );
    assert_clean(&violations(&source));
}

#[test]
fn authoritative_project_policy_is_reported() {
    let source = with_extra(
        r#"
resource "google_project_iam_policy" "all" {
  project     = "my-project"
  policy_data = data.google_iam_policy.all.policy_data
}
"#,
    );
    assert_eq!(
        violations(&source),
        [broad(
            "google_project_iam_policy.all",
            "(authoritative policy)"
        )]
    );
}

#[test]
fn invoker_grant_on_another_service_is_reported() {
    let source = edited(
        "name   = google_cloud_run_v2_service.backend.name",
        "name   = google_cloud_run_v2_service.other.name",
    );
    assert_eq!(violations(&source), [Violation::MissingInvokerOnService]);
}

#[test]
fn disabled_invoker_check_is_reported() {
    let source = edited(
        "  location = \"europe-west1\"\n  template {",
        "  location = \"europe-west1\"\n  invoker_iam_disabled = true\n  template {",
    );
    assert_eq!(violations(&source), [Violation::InvokerIamDisabled]);
}

#[test]
fn service_url_read_from_the_service_itself_is_reported() {
    let source = edited(
        r#"service_url = "https://backend-${data.google_project.this.number}.europe-west1.run.app""#,
        "service_url = google_cloud_run_v2_service.backend.uri",
    );
    assert_eq!(
        violations(&source),
        [Violation::SelfReferencingServiceUrl(
            "google_cloud_run_v2_service.backend.uri".to_owned()
        )]
    );
}

#[test]
fn missing_env_var_is_reported() {
    let source = edited(
        "      env {\n        name  = \"GCP_LOCATION\"\n        value = google_cloud_tasks_queue.documents.location\n      }\n",
        "",
    );
    assert_eq!(violations(&source), [Violation::MissingEnv("GCP_LOCATION")]);
}

#[test]
fn undeclared_oidc_account_is_reported() {
    let source = edited(
        "value = google_service_account.invoker.email\n      }",
        "value = \"someone@example.com\"\n      }",
    );
    // The literal email names no declared account, so neither grant can be shown to exist.
    assert_eq!(
        violations(&source),
        [
            Violation::UnknownOidcAccount,
            Violation::MissingActAsOnOidcAccount,
            Violation::MissingInvokerOnService,
            Violation::OutputDiffersFromEnv("CLOUD_RUN_SERVICE_ACCOUNT"),
        ]
    );
}

#[test]
fn default_compute_identity_is_reported() {
    let source = edited(
        "    service_account = google_service_account.runtime.email\n",
        "",
    );
    // Running as the default account, the service holds neither of the runtime grants.
    assert_eq!(
        violations(&source),
        [
            Violation::CloudRunWithoutRuntimeAccount,
            Violation::MissingEnqueuerOnQueue,
            Violation::MissingActAsOnOidcAccount,
        ]
    );
}

#[test]
fn queue_without_retry_config_is_reported() {
    let source = edited("  retry_config {\n    max_attempts = 5\n  }\n", "");
    assert_eq!(
        violations(&source),
        [Violation::QueueBlockMissing {
            queue: "documents".to_owned(),
            block: "retry_config",
        }]
    );
}

#[test]
fn missing_output_is_reported() {
    let source = without_block(r#"output "cloud_run_service_url""#);
    assert_eq!(
        violations(&source),
        [Violation::MissingOutput("CLOUD_RUN_SERVICE_URL")]
    );
}

#[test]
fn output_that_differs_from_the_environment_is_reported() {
    let source = edited(
        "output \"cloud_run_service_account\" {\n  value = google_service_account.invoker.email",
        "output \"cloud_run_service_account\" {\n  value = google_service_account.runtime.email",
    );
    assert_eq!(
        violations(&source),
        [Violation::OutputDiffersFromEnv("CLOUD_RUN_SERVICE_ACCOUNT")]
    );
}

#[test]
fn module_without_queue_or_service_is_reported() {
    assert_eq!(
        violations(""),
        [
            Violation::MissingResource("google_cloud_tasks_queue"),
            Violation::MissingResource("google_cloud_run_v2_service"),
            Violation::MissingOutput("GCP_PROJECT_ID"),
            Violation::MissingOutput("GCP_LOCATION"),
            Violation::MissingOutput("CLOUD_TASKS_QUEUE"),
            Violation::MissingOutput("CLOUD_RUN_SERVICE_URL"),
            Violation::MissingOutput("CLOUD_RUN_SERVICE_ACCOUNT"),
        ]
    );
}

// ---------------------------------------------------------------------------------------------
// Conventions, on small modules
// ---------------------------------------------------------------------------------------------

const CONVENTIONS: &str = r#"
terraform {
  required_version = ">= 1.5.0"
  required_providers {
    google = {
      source  = "hashicorp/google"
      version = ">= 6.12, < 8.0"
    }
  }
}

provider "google" {
  project = var.project_id
  region  = var.region
}

resource "google_project_service" "required" {
  for_each           = toset(["cloudtasks.googleapis.com", "run.googleapis.com", "iam.googleapis.com"])
  service            = each.value
  disable_on_destroy = false
}

variable "project_id" {
  description = "Project."
  type        = string
  validation {
    condition     = length(var.project_id) > 0
    error_message = "Required."
  }
}
variable "region" {
  description = "Region."
  type        = string
  validation {
    condition     = length(var.region) > 0
    error_message = "Required."
  }
}
variable "queue_name" {
  description = "Queue."
  type        = string
  default     = "document-processing"
  validation {
    condition     = length(var.queue_name) > 0
    error_message = "Required."
  }
}
variable "service_name" {
  description = "Service."
  type        = string
  validation {
    condition     = length(var.service_name) > 0
    error_message = "Required."
  }
}
variable "container_image" {
  description = "Image."
  type        = string
  validation {
    condition     = length(var.container_image) > 0
    error_message = "Required."
  }
}
variable "deletion_protection" {
  description = "Booleans need no validation."
  type        = bool
  default     = true
}
"#;

fn convention_violations(source: &str) -> Vec<Violation> {
    check_conventions(&hcl::parse(source).expect("the fixture parses"))
}

fn conventions_edited(from: &str, to: &str) -> String {
    assert_eq!(
        CONVENTIONS.matches(from).count(),
        1,
        "the edit must hit once: {from}"
    );
    CONVENTIONS.replacen(from, to, 1)
}

#[test]
fn conventions_fixture_keeps_every_convention() {
    assert_clean(&convention_violations(CONVENTIONS));
}

#[test]
fn unconstrained_provider_is_reported() {
    let source = conventions_edited("      version = \">= 6.12, < 8.0\"\n", "");
    assert_eq!(
        convention_violations(&source),
        [Violation::MissingProviderConstraint]
    );
}

#[test]
fn hard_coded_provider_region_is_reported() {
    let source = conventions_edited("region  = var.region", "region  = \"us-central1\"");
    assert_eq!(
        convention_violations(&source),
        [Violation::ProviderNotFromVariables]
    );
}

#[test]
fn api_disabled_on_destroy_is_reported() {
    let source = conventions_edited("disable_on_destroy = false", "disable_on_destroy = true");
    assert_eq!(
        convention_violations(&source),
        [Violation::ApiDisabledOnDestroy("required".to_owned())]
    );
}

#[test]
fn missing_api_is_reported() {
    let source = conventions_edited(", \"iam.googleapis.com\"", "");
    assert_eq!(
        convention_violations(&source),
        [Violation::MissingApi("iam.googleapis.com")]
    );
}

#[test]
fn unvalidated_variable_is_reported() {
    let source = conventions_edited(
        "  validation {\n    condition     = length(var.container_image) > 0\n    error_message = \"Required.\"\n  }\n",
        "",
    );
    assert_eq!(
        convention_violations(&source),
        [Violation::VariableLacks {
            variable: "container_image".to_owned(),
            what: "validation",
        }]
    );
}

#[test]
fn undescribed_variable_is_reported() {
    let source = conventions_edited("  description = \"Region.\"\n", "");
    assert_eq!(
        convention_violations(&source),
        [Violation::VariableLacks {
            variable: "region".to_owned(),
            what: "description",
        }]
    );
}

#[test]
fn other_queue_default_is_reported() {
    let source = conventions_edited(
        "default     = \"document-processing\"",
        "default     = \"documents\"",
    );
    assert_eq!(
        convention_violations(&source),
        [Violation::VariableDefault {
            variable: "queue_name",
            expected: "document-processing",
        }]
    );
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

#[test]
fn durations_are_parsed_in_seconds() {
    assert_eq!(duration_secs("900s"), Some(900.0));
    assert_eq!(duration_secs("600s"), Some(600.0));
    assert_eq!(duration_secs("0s"), Some(0.0));
    assert_eq!(duration_secs("3.5s"), Some(3.5));
    assert_eq!(duration_secs("0.000000001s"), Some(0.000_000_001));
}

#[test]
fn malformed_durations_are_refused() {
    for duration in [
        "",
        "s",
        "900",
        "15m",
        "-5s",
        "1.s",
        ".5s",
        "1.0000000001s",
        "1e3s",
        " 900s",
    ] {
        assert_eq!(duration_secs(duration), None, "{duration:?}");
    }
}

#[test]
fn members_are_read_in_both_spellings() {
    let body = hcl::parse(
        r#"
a = google_service_account.x.member
b = "serviceAccount:${google_service_account.y.email}"
c = "serviceAccount:someone@example.com"
d = google_service_account.z.email
"#,
    )
    .expect("parses");
    assert_eq!(member_account(attr(&body, "a")).as_deref(), Some("x"));
    assert_eq!(member_account(attr(&body, "b")).as_deref(), Some("y"));
    assert_eq!(member_account(attr(&body, "c")), None);
    assert_eq!(member_account(attr(&body, "d")), None);
}

#[test]
fn module_loader_reads_nested_files_and_skips_terraform_dir() {
    let dir = std::env::temp_dir().join(format!("cloud-tasks-tf-{}", std::process::id()));
    let nested_dir = dir.join("nested");
    let plugins = dir.join(".terraform");
    fs::create_dir_all(&nested_dir).expect("create dirs");
    fs::create_dir_all(&plugins).expect("create dirs");
    fs::write(dir.join("a.tf"), "a = 1\n").expect("write");
    fs::write(nested_dir.join("b.tf"), "b = 2\n").expect("write");
    fs::write(dir.join("c.tf.example"), "c = 3\n").expect("write");
    fs::write(plugins.join("d.tf"), "d = 4\n").expect("write");
    let body = load_module(&dir);
    fs::remove_dir_all(&dir).expect("clean up");
    let keys: Vec<&str> = body.attributes().map(|a| a.key()).collect();
    assert_eq!(keys, ["a", "b"]);
}
