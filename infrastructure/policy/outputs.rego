package main

import rego.v1

# One output per backend setting, named after its environment variable in lower case, so
# `terraform output` can write the backend's .env.
deny contains msg if {
	some env in backend_env
	not output(lower(env))
	msg := sprintf("output \"%s\": missing; add it with the value the Cloud Run service gets as %s", [lower(env), env])
}

deny contains msg if {
	some env in backend_env
	value := output(lower(env)).value
	some name, service in resources_of("google_cloud_run_v2_service")
	env_value(template_of(service), env) != value
	msg := sprintf("output \"%s\": value %v differs from %s of google_cloud_run_v2_service.%s; give both the same expression", [lower(env), value, env, name])
}
