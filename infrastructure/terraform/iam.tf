# Every grant is on the one resource that needs it. Nothing here is granted on the project, and
# nothing to allUsers or allAuthenticatedUsers: infrastructure/policy/iam.rego fails the build otherwise.

# CreateTask on this queue. Without it: PERMISSION_DENIED "The principal (user or service
# account) lacks IAM permission "cloudtasks.tasks.create" for the resource "projects/.../queues/
# document-processing" (or the resource may not exist)".
resource "google_cloud_tasks_queue_iam_member" "backend_enqueuer" {
  project  = google_cloud_tasks_queue.documents.project
  location = google_cloud_tasks_queue.documents.location
  name     = google_cloud_tasks_queue.documents.name
  role     = "roles/cloudtasks.enqueuer"
  member   = google_service_account.backend_runtime.member
}

# iam.serviceAccounts.actAs on the invoker account, needed to put that account in a task's
# OIDC token. Without it CreateTask fails, although the enqueuer role is in place, with
# PERMISSION_DENIED "The principal (user or service account) lacks IAM permission
# "iam.serviceAccounts.actAs" for the resource "<invoker email>"".
resource "google_service_account_iam_member" "backend_act_as_invoker" {
  service_account_id = google_service_account.task_invoker.name
  role               = "roles/iam.serviceAccountUser"
  member             = google_service_account.backend_runtime.member
}

# Lets Cloud Tasks' deliveries, authenticated as the invoker account, through to this service
# only. Without it every delivery gets 403 from Cloud Run before reaching the container, and
# the queue retries until max_attempts.
resource "google_cloud_run_v2_service_iam_member" "run_invoker" {
  project  = google_cloud_run_v2_service.backend.project
  location = google_cloud_run_v2_service.backend.location
  name     = google_cloud_run_v2_service.backend.name
  role     = "roles/run.invoker"
  member   = google_service_account.task_invoker.member
}
