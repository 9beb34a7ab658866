# One output per setting the backend reads, named after its environment variable in lower
# case, with the same value the Cloud Run service gets. infrastructure/policy/outputs.rego keeps
# the two in step.

output "gcp_project_id" {
  description = "GCP_PROJECT_ID: project of the queue."
  value       = var.project_id
}

output "gcp_location" {
  description = "GCP_LOCATION: location (region) of the queue."
  value       = google_cloud_tasks_queue.documents.location
}

output "cloud_tasks_queue" {
  description = "CLOUD_TASKS_QUEUE: ID of the queue."
  value       = google_cloud_tasks_queue.documents.name
}

output "cloud_run_service_url" {
  description = "CLOUD_RUN_SERVICE_URL: the backend's deterministic URL, used as the tasks' target and OIDC audience."
  value       = local.service_url
}

output "cloud_run_service_account" {
  description = "CLOUD_RUN_SERVICE_ACCOUNT: email of the account whose OIDC token Cloud Tasks presents to the backend."
  value       = google_service_account.task_invoker.email
}
