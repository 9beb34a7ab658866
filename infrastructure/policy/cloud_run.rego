package main

import rego.v1

# The dispatch deadline the client sets on every task.
dispatch_deadline_seconds := 600

# Cloud Run's request timeout when template.timeout is unset.
request_timeout(template) := timeout if {
	timeout := resolved(template.timeout)
} else := "300s"

deny contains "google_cloud_run_v2_service: none declared; declare the backend's service (cloud_run.tf)" if {
	count(resources_of("google_cloud_run_v2_service")) == 0
}

deny contains msg if {
	some name, service in resources_of("google_cloud_run_v2_service")
	not runtime_account(template_of(service))
	msg := sprintf("google_cloud_run_v2_service.%s: template.service_account is not the email of a declared google_service_account, so the service runs as the default compute account; set it to google_service_account.RUNTIME.email", [name])
}

deny contains msg if {
	some name, service in resources_of("google_cloud_run_v2_service")
	"invoker_iam_disabled" in object.keys(service)
	resolved(service.invoker_iam_disabled) != false
	msg := sprintf("google_cloud_run_v2_service.%s: invoker_iam_disabled lets anyone call the service; set it to false (the only invoker is the task_invoker grant)", [name])
}

# A shorter timeout cuts off a handler Cloud Tasks is still waiting for.
deny contains msg if {
	some name, service in resources_of("google_cloud_run_v2_service")
	timeout := request_timeout(template_of(service))
	duration_seconds(timeout) < dispatch_deadline_seconds
	msg := sprintf("google_cloud_run_v2_service.%s: request timeout %s is shorter than the tasks' 600s dispatch deadline; set template.timeout (or its variable's default) to at least \"600s\" (unset is Cloud Run's 300s)", [name, timeout])
}

deny contains msg if {
	some name, service in resources_of("google_cloud_run_v2_service")
	timeout := request_timeout(template_of(service))
	not duration_seconds(timeout)
	msg := sprintf("google_cloud_run_v2_service.%s: cannot read the request timeout %v as seconds; write template.timeout (or its variable's default) as a duration such as \"900s\"", [name, timeout])
}

deny contains msg if {
	some name, service in resources_of("google_cloud_run_v2_service")
	some env in backend_env
	not env_value(template_of(service), env)
	msg := sprintf("google_cloud_run_v2_service.%s: no env %s, which the backend reads at start-up; add an env block for it to the container", [name, env])
}

deny contains msg if {
	some name, service in resources_of("google_cloud_run_v2_service")
	template := template_of(service)
	env_value(template, "CLOUD_RUN_SERVICE_ACCOUNT")
	not oidc_account(template)
	msg := sprintf("google_cloud_run_v2_service.%s: CLOUD_RUN_SERVICE_ACCOUNT is not the email of a declared google_service_account, so its grants cannot be checked; set it to google_service_account.INVOKER.email", [name])
}

# The service's own uri exists only once the service does: a cycle Terraform refuses.
deny contains msg if {
	some name, service in resources_of("google_cloud_run_v2_service")
	url := resolved(env_value(template_of(service), "CLOUD_RUN_SERVICE_URL"))
	is_string(url)
	contains(url, "google_cloud_run_v2_service.")
	msg := sprintf("google_cloud_run_v2_service.%s: CLOUD_RUN_SERVICE_URL is read from a Cloud Run service (%s), a cycle; build the deterministic https://SERVICE-PROJECT_NUMBER.REGION.run.app URL instead", [name, url])
}

# Behind invoker IAM Cloud Run checks each token and forwards it with its signature removed: the
# backend accepts such tokens only with this setting, and refuses every delivery without it.
deny contains msg if {
	some name, service in resources_of("google_cloud_run_v2_service")
	not invoker_iam_disabled(service)
	not trusts_cloud_run(service)
	msg := sprintf("google_cloud_run_v2_service.%s: no env CLOUD_TASKS_OIDC_VERIFIED_BY_CLOUD_RUN = \"true\"; behind invoker IAM every task arrives with its token's signature removed by Cloud Run, and the backend refuses it without this setting", [name])
}

# Without invoker IAM nothing checks the signature before the backend: trusting Cloud Run's check
# would accept a token anyone can write.
deny contains msg if {
	some name, service in resources_of("google_cloud_run_v2_service")
	invoker_iam_disabled(service)
	env_value(template_of(service), "CLOUD_TASKS_OIDC_VERIFIED_BY_CLOUD_RUN")
	msg := sprintf("google_cloud_run_v2_service.%s: CLOUD_TASKS_OIDC_VERIFIED_BY_CLOUD_RUN is set on a service whose invoker IAM is disabled, so nothing checks the tokens' signatures and anyone could write one it accepts; turn invoker IAM on (invoker_iam_disabled = false) or remove the env", [name])
}

# The backend refuses to start on Cloud Run with another issuer than Google.
deny contains msg if {
	some name, service in resources_of("google_cloud_run_v2_service")
	env_value(template_of(service), "CLOUD_TASKS_OIDC_ISSUER")
	msg := sprintf("google_cloud_run_v2_service.%s: env CLOUD_TASKS_OIDC_ISSUER names another token issuer than Google, which is for the local emulator; the backend refuses to start with it on Cloud Run; remove it", [name])
}

invoker_iam_disabled(service) if {
	"invoker_iam_disabled" in object.keys(service)
	resolved(service.invoker_iam_disabled) != false
}

trusts_cloud_run(service) if {
	resolved(env_value(template_of(service), "CLOUD_TASKS_OIDC_VERIFIED_BY_CLOUD_RUN")) == "true"
}
