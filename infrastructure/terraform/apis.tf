# The APIs this configuration uses. They stay enabled on destroy: other workloads in the
# project may depend on them, and disabling an API is not something a destroy should do.
resource "google_project_service" "required" {
  for_each = toset([
    "cloudtasks.googleapis.com",
    "run.googleapis.com",
    "iam.googleapis.com",
  ])

  project            = var.project_id
  service            = each.value
  disable_on_destroy = false
}

data "google_project" "this" {
  project_id = var.project_id
}
