# Two identities, so that each holds only what its job needs:
#
# - backend_runtime is what the backend's code runs as. It creates tasks, so it holds the
#   enqueuer role on the queue and may act as task_invoker when naming it in a task's OIDC token.
# - task_invoker is the identity Cloud Tasks presents to the backend. It can invoke the one
#   Cloud Run service and nothing else, and no code runs as it.
#
# actAs (roles/iam.serviceAccountUser) lets the runtime account name task_invoker in a task,
# but not mint task_invoker's tokens itself; that would need a token-creator role, which nothing
# here grants. So a leaked runtime credential cannot call the backend directly: it can only
# enqueue, through the queue's rate limits and logs. With one account for both jobs, the code
# running in the backend would hold the invoker role itself, and a handler that pins the token's
# `email` to the invoker account could not tell a Cloud Tasks delivery from any other call the
# backend's own identity makes.

resource "google_service_account" "backend_runtime" {
  project      = var.project_id
  account_id   = var.runtime_account_id
  display_name = "Document backend (runtime)"
  description  = "Identity of the ${var.service_name} Cloud Run service; enqueues document-processing tasks."

  depends_on = [google_project_service.required]
}

resource "google_service_account" "task_invoker" {
  project      = var.project_id
  account_id   = var.invoker_account_id
  display_name = "Document tasks invoker (OIDC)"
  description  = "Identity in the OIDC token Cloud Tasks sends with each ${var.queue_name} task; may only invoke ${var.service_name}."

  depends_on = [google_project_service.required]
}
