package main

import rego.v1

# Roles never granted on a whole project, folder or organization: the ones this flow needs (each
# belongs on one resource), the token creators, and broader roles that contain them.
roles_never_broad := {
	"roles/run.invoker",
	"roles/cloudtasks.enqueuer",
	"roles/iam.serviceAccountUser",
	"roles/iam.serviceAccountTokenCreator",
	"roles/iam.serviceAccountOpenIdTokenCreator",
	"roles/iam.serviceAccountAdmin",
	"roles/run.admin",
	"roles/run.developer",
	"roles/cloudtasks.admin",
	"roles/cloudtasks.queueAdmin",
	"roles/editor",
	"roles/owner",
}

broad_scope(type) := scope if {
	some scope in ["project", "folder", "organization"]
	startswith(type, sprintf("google_%s_iam_", [scope]))
}

deny contains msg if {
	some name, service in resources_of("google_cloud_run_v2_service")
	not enqueuer_granted(template_of(service))
	msg := sprintf("google_cloud_run_v2_service.%s: its runtime account has no roles/cloudtasks.enqueuer on the queue in CLOUD_TASKS_QUEUE, so CreateTask is denied; add a google_cloud_tasks_queue_iam_member with name = google_cloud_tasks_queue.QUEUE.name and member = google_service_account.RUNTIME.member", [name])
}

enqueuer_granted(template) if {
	runtime := runtime_account(template)
	queue := referenced(env_value(template, "CLOUD_TASKS_QUEUE"), "google_cloud_tasks_queue", {"name"})
	some grant in resources_of("google_cloud_tasks_queue_iam_member")
	grant.role == "roles/cloudtasks.enqueuer"
	referenced(grant.name, "google_cloud_tasks_queue", {"name", "id"}) == queue
	member_account(grant.member) == runtime
}

deny contains msg if {
	some name, service in resources_of("google_cloud_run_v2_service")
	not act_as_granted(template_of(service))
	msg := sprintf("google_cloud_run_v2_service.%s: its runtime account has no roles/iam.serviceAccountUser on the account in CLOUD_RUN_SERVICE_ACCOUNT, so tasks with that OIDC account are refused; add a google_service_account_iam_member with service_account_id = google_service_account.INVOKER.name and member = google_service_account.RUNTIME.member", [name])
}

act_as_granted(template) if {
	runtime := runtime_account(template)
	invoker := oidc_account(template)
	some grant in resources_of("google_service_account_iam_member")
	grant.role == "roles/iam.serviceAccountUser"
	referenced(grant.service_account_id, "google_service_account", {"name", "id"}) == invoker
	member_account(grant.member) == runtime
}

deny contains msg if {
	some name, service in resources_of("google_cloud_run_v2_service")
	not invoker_granted(name, template_of(service))
	msg := sprintf("google_cloud_run_v2_service.%s: the account in CLOUD_RUN_SERVICE_ACCOUNT has no roles/run.invoker on this service, so every dispatch gets 403; add a google_cloud_run_v2_service_iam_member with name = google_cloud_run_v2_service.%s.name and member = google_service_account.INVOKER.member", [name, name])
}

invoker_granted(service_name, template) if {
	invoker := oidc_account(template)
	some grant in resources_of("google_cloud_run_v2_service_iam_member")
	grant.role == "roles/run.invoker"
	referenced(grant.name, "google_cloud_run_v2_service", {"name", "id"}) == service_name
	member_account(grant.member) == invoker
}

deny contains msg if {
	some [type, name, _] in resources
	broad_scope(type)
	endswith(type, "_iam_policy")
	msg := sprintf("%s.%s: an authoritative IAM policy replaces every grant on the %s and cannot be checked here; grant roles with *_iam_member on the one resource that needs them", [type, name, broad_scope(type)])
}

# A role that is not a literal (for_each, a variable) cannot be shown to be harmless.
deny contains msg if {
	some [type, name, grant] in resources
	broad_scope(type)
	regex.match(`_iam_(member|binding)$`, type)
	role := object.get(grant, "role", "(none)")
	not harmless_broad_role(role)
	msg := sprintf("%s.%s: role %s granted on the whole %s; grant it on the one queue, service account or Cloud Run service that needs it, or use a narrower literal role", [type, name, role, broad_scope(type)])
}

harmless_broad_role(role) if {
	startswith(role, "roles/")
	not contains(role, "${")
	not role in roles_never_broad
}

# A custom role of this module may be granted on the project only if every permission it holds
# is one that cannot reach past what it is for. cloudtasks.operations.get reads a Cloud Tasks
# operation whose name the caller already has; operations live under the project, so no
# narrower grant exists.
permissions_safe_project_wide := {"cloudtasks.operations.get"}

harmless_broad_role(role) if {
	custom := resources_of("google_project_iam_custom_role")[referenced(role, "google_project_iam_custom_role", {"id", "name"})]
	is_array(custom.permissions)
	every permission in custom.permissions {
		permission in permissions_safe_project_wide
	}
}

# BatchCreateTasks answers with an operation the client polls (GetOperation); without
# cloudtasks.operations.get on the project a batch that is not done at once cannot learn its
# outcome.
deny contains msg if {
	some name, service in resources_of("google_cloud_run_v2_service")
	runtime_account(template_of(service))
	not operation_reader_granted(template_of(service))
	msg := sprintf("google_cloud_run_v2_service.%s: its runtime account cannot read Cloud Tasks operations (cloudtasks.operations.get on the project), so a batch whose operation is not done at once fails; add a google_project_iam_custom_role with permissions = [\"cloudtasks.operations.get\"] and a google_project_iam_member with role = google_project_iam_custom_role.ROLE.id and member = google_service_account.RUNTIME.member", [name])
}

operation_reader_granted(template) if {
	runtime := runtime_account(template)
	some grant in resources_of("google_project_iam_member")
	member_account(grant.member) == runtime
	custom := resources_of("google_project_iam_custom_role")[referenced(grant.role, "google_project_iam_custom_role", {"id", "name"})]
	"cloudtasks.operations.get" in custom.permissions
}

# Anywhere a member could come from: members, member lists, locals, variable defaults.
deny contains msg if {
	some file in files
	walk(file, [path, value])
	is_string(value)
	some principal in ["allUsers", "allAuthenticatedUsers"]
	names_principal(value, principal)
	where := concat(".", [step | some step in path; is_string(step)])
	msg := sprintf("%s: %s makes it public; name the one service account that needs access instead", [where, principal])
}

names_principal(value, principal) if value == principal

# Inside an expression conftest keeps as source text, e.g. "${concat(["allUsers"], ...)}".
names_principal(value, principal) if contains(value, sprintf("\"%s\"", [principal]))
