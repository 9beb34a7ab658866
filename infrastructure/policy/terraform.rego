# Helpers shared by the rules in this directory: how to find blocks and follow references in a
# Terraform module as conftest's HCL2 parser gives it with --combine (tests/terraform.rs builds
# the same input). Each file is {"path", "contents"}; in contents a block is a list of bodies
# under its type and labels (resource.TYPE.NAME[0]), and any expression that is not a literal is
# its source text wrapped in ${...}, so `var.x` reads "${var.x}".
package main

import rego.v1

files := [file.contents | some file in input]

# Every resource as [TYPE, NAME, body].
resources contains [type, name, body] if {
	some file in files
	some type, named in file.resource
	some name, bodies in named
	some body in bodies
}

# {NAME: body} of the resources of one type.
resources_of(type) := {name: body | some [t, name, body] in resources; t == type}

declared(type, name) if resources_of(type)[name]

variable(name) := body if {
	some file in files
	some body in file.variable[name]
}

output(name) := body if {
	some file in files
	some body in file.output[name]
}

local_value(name) := value if {
	some file in files
	some locals in file.locals
	value := locals[name]
}

# TEXT when the whole value is one reference "${TEXT}", e.g. "${var.region}".
reference(value) := text if {
	is_string(value)
	startswith(value, "${")
	endswith(value, "}")
	text := substring(value, 2, count(value) - 3)
	regex.match(`^[A-Za-z0-9_.-]+$`, text)
}

# NAME when value is "${KIND.NAME}" (KIND "var" or "local").
reference_name(value, kind) := parts[1] if {
	parts := split(reference(value), ".")
	count(parts) == 2
	parts[0] == kind
}

# The value Terraform uses when nothing is overridden: var.NAME becomes the variable's default
# and local.NAME the local's value, following up to three such steps.
resolved(value) := resolve_step(resolve_step(resolve_step(value)))

resolve_step(value) := fallback if {
	fallback := variable(reference_name(value, "var"))["default"]
} else := local if {
	local := local_value(reference_name(value, "local"))
} else := value

# NAME when value is "${TYPE.NAME.ATTRIBUTE}" for one of the attributes.
referenced(value, type, attributes) := parts[1] if {
	parts := split(reference(value), ".")
	count(parts) == 3
	parts[0] == type
	parts[2] in attributes
}

# The google_service_account an IAM member names, as google_service_account.NAME.member or
# "serviceAccount:${google_service_account.NAME.email}".
member_account(member) := name if {
	name := referenced(member, "google_service_account", {"member"})
} else := name if {
	startswith(member, "serviceAccount:")
	name := referenced(trim_prefix(member, "serviceAccount:"), "google_service_account", {"email"})
}

# Seconds in a protobuf duration such as "900s" or "3.5s".
duration_seconds(duration) := to_number(trim_suffix(duration, "s")) if {
	is_string(duration)
	regex.match(`^[0-9]+(\.[0-9]{1,9})?s$`, duration)
}

# The settings the backend reads from its environment (src/config.rs, Settings).
backend_env := ["GCP_PROJECT_ID", "GCP_LOCATION", "CLOUD_TASKS_QUEUE", "CLOUD_RUN_SERVICE_URL", "CLOUD_RUN_SERVICE_ACCOUNT"]

template_of(service) := template if {
	template := service.template[0]
} else := {}

env_value(template, name) := env.value if {
	some container in template.containers
	some env in container.env
	env.name == name
}

# The google_service_account the service runs as, if it is a declared one.
runtime_account(template) := name if {
	name := referenced(template.service_account, "google_service_account", {"email"})
	declared("google_service_account", name)
}

# The declared google_service_account named in the tasks' OIDC token.
oidc_account(template) := name if {
	name := referenced(env_value(template, "CLOUD_RUN_SERVICE_ACCOUNT"), "google_service_account", {"email"})
	declared("google_service_account", name)
}
