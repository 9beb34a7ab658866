package main

import rego.v1

required_apis := ["cloudtasks.googleapis.com", "run.googleapis.com", "iam.googleapis.com"]

required_variables := ["project_id", "region", "queue_name", "service_name", "container_image"]

deny contains `terraform: required_version or the hashicorp/google version constraint is missing; pin both in versions.tf` if {
	not versions_pinned
}

versions_pinned if {
	some file in files
	some terraform in file.terraform
	terraform.required_version
	some providers in terraform.required_providers
	providers.google.source == "hashicorp/google"
	providers.google.version != ""
}

deny contains `provider "google": project and region must come from var.project_id and var.region, so one module deploys where its variables say` if {
	not provider_from_variables
}

provider_from_variables if {
	some file in files
	some provider in file.provider.google
	provider.project == "${var.project_id}"
	provider.region == "${var.region}"
}

deny contains msg if {
	some api in required_apis
	not api_enabled(api)
	msg := sprintf("google_project_service: %s is not enabled; add it to the required APIs (apis.tf)", [api])
}

api_enabled(api) if resources_of("google_project_service")[_].service == api

# for_each = toset([...]) is kept as source text by the parsers.
api_enabled(api) if {
	for_each := resources_of("google_project_service")[_].for_each
	is_string(for_each)
	contains(for_each, sprintf("\"%s\"", [api]))
}

deny contains msg if {
	some name, service in resources_of("google_project_service")
	object.get(service, "disable_on_destroy", true) != false
	msg := sprintf("google_project_service.%s: set disable_on_destroy = false; destroying this stack must not switch off APIs other workloads use", [name])
}

variables contains [name, body] if {
	some file in files
	some name, bodies in file.variable
	some body in bodies
}

deny contains msg if {
	some [name, body] in variables
	trim_space(object.get(body, "description", "")) == ""
	msg := sprintf("variable \"%s\": no description; say what it is for and where it ends up", [name])
}

deny contains msg if {
	some [name, body] in variables
	not body.type
	msg := sprintf("variable \"%s\": no type; declare one", [name])
}

# A bad value then fails at plan with a message, not at apply or at run time.
deny contains msg if {
	some [name, body] in variables
	body.type
	body.type != "${bool}"
	not validated(body)
	msg := sprintf("variable \"%s\": no validation; add a validation block with condition and error_message", [name])
}

validated(body) if {
	some validation in body.validation
	validation.condition
	validation.error_message
}

deny contains msg if {
	some name in required_variables
	not variable(name)
	msg := sprintf("variable \"%s\": missing; the backend's settings and the resources' names come from it", [name])
}

deny contains `variable "queue_name": default must be "document-processing", the queue the backend and its docs name` if {
	variable("queue_name")["default"] != "document-processing"
}
