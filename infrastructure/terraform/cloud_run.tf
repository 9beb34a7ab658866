locals {
  # The backend needs its own URL (CLOUD_RUN_SERVICE_URL: the target and OIDC audience of the
  # tasks it creates), but google_cloud_run_v2_service.backend.uri only exists once the service
  # does, and a resource cannot read its own attributes: that is a cycle Terraform refuses.
  #
  # Cloud Run gives every service whose name fits a deterministic URL,
  # https://SERVICE-PROJECT_NUMBER.REGION.run.app, known before the service is created.
  # service_name is limited to 49 characters so that it always fits, and the postcondition
  # below checks after apply that Cloud Run really serves that URL.
  service_url = "https://${var.service_name}-${data.google_project.this.number}.${var.region}.run.app"
}

resource "google_cloud_run_v2_service" "backend" {
  project  = var.project_id
  name     = var.service_name
  location = var.region

  # Reachable over the network per var.ingress, but never unauthenticated: the only invoker
  # grant is the one in iam.tf.
  ingress              = var.ingress
  invoker_iam_disabled = false
  deletion_protection  = var.deletion_protection

  template {
    service_account = google_service_account.backend_runtime.email

    # At least the tasks' dispatch deadline (600s), so Cloud Run does not cut off a handler that
    # Cloud Tasks is still waiting for. variables.tf enforces the lower bound.
    timeout = var.request_timeout

    containers {
      image = var.container_image

      env {
        name  = "GCP_PROJECT_ID"
        value = var.project_id
      }
      env {
        name  = "GCP_LOCATION"
        value = google_cloud_tasks_queue.documents.location
      }
      env {
        name  = "CLOUD_TASKS_QUEUE"
        value = google_cloud_tasks_queue.documents.name
      }
      env {
        name  = "CLOUD_RUN_SERVICE_URL"
        value = local.service_url
      }
      env {
        name  = "CLOUD_RUN_SERVICE_ACCOUNT"
        value = google_service_account.task_invoker.email
      }
      # Invoker IAM (on above) makes Cloud Run check each task's
      # token and forward it with the signature replaced by SIGNATURE_REMOVED_BY_GOOGLE; the
      # backend accepts such tokens, after checking their claims, only with this. It is safe
      # only here: policy/cloud_run.rego refuses it on a service without invoker IAM.
      env {
        name  = "CLOUD_TASKS_OIDC_VERIFIED_BY_CLOUD_RUN"
        value = "true"
      }
    }
  }

  lifecycle {
    postcondition {
      condition     = contains(self.urls, local.service_url)
      error_message = "Cloud Run does not serve ${local.service_url}, the URL given to the backend as CLOUD_RUN_SERVICE_URL. Its URLs are: ${join(", ", self.urls)}."
    }
  }

  depends_on = [google_project_service.required]
}
