# Every grant is on the one resource that needs it, and nothing to allUsers or
# allAuthenticatedUsers: infrastructure/policy/iam.rego fails the build otherwise. The one grant
# on the project is a custom role holding a single permission, cloudtasks.operations.get, because
# operations live under the project and under no queue (see backend_operation_reader).
#
# The runtime account can enqueue (one task or a batch) and nothing else. Reading, cancelling,
# running and listing tasks (cloud-tasks status / cancel / run / list) are an operator's job:
# grant the person or the CI account roles/cloudtasks.viewer (status, list),
# roles/cloudtasks.taskDeleter (cancel) or roles/cloudtasks.taskRunner (run) on the queue.

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

# GetOperation on a batch's operation. BatchCreateTasks (enqueue_all, cloud-tasks enqueue-batch)
# answers with a long-running operation, which the client polls until it is done to learn which
# tasks were created. The operation's name is projects/PROJECT/locations/LOCATION/operations/ID:
# under the project, not the queue, so no queue-level grant reaches it; and no predefined role
# narrower than roles/cloudtasks.editor holds cloudtasks.operations.get. Hence this custom role
# with only that permission (no list permission exists: the account reads only operations whose
# name it was given, its own). Without it a batch whose operation is not done at once fails with
# PERMISSION_DENIED "... lacks IAM permission "cloudtasks.operations.get" for the resource
# "projects/.../operations/..."", reported for each of its tasks as possibly created.
resource "google_project_iam_custom_role" "operation_reader" {
  project     = var.project_id
  role_id     = "cloudTasksOperationReader"
  title       = "Cloud Tasks operation reader"
  description = "Reads Cloud Tasks long-running operations: the outcome of a BatchCreateTasks call. Nothing else."
  permissions = ["cloudtasks.operations.get"]

  depends_on = [google_project_service.required]
}

resource "google_project_iam_member" "backend_operation_reader" {
  project = var.project_id
  role    = google_project_iam_custom_role.operation_reader.id
  member  = google_service_account.backend_runtime.member
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
