resource "google_cloud_tasks_queue" "documents" {
  project  = var.project_id
  name     = var.queue_name
  location = var.region

  rate_limits {
    max_dispatches_per_second = var.queue_max_dispatches_per_second
    max_concurrent_dispatches = var.queue_max_concurrent_dispatches
  }

  retry_config {
    max_attempts       = var.queue_max_attempts
    max_retry_duration = var.queue_max_retry_duration
    min_backoff        = var.queue_min_backoff
    max_backoff        = var.queue_max_backoff
    max_doublings      = var.queue_max_doublings
  }

  stackdriver_logging_config {
    sampling_ratio = var.queue_logging_sampling_ratio
  }

  lifecycle {
    precondition {
      condition     = tonumber(trimsuffix(var.queue_min_backoff, "s")) <= tonumber(trimsuffix(var.queue_max_backoff, "s"))
      error_message = "queue_min_backoff must not be longer than queue_max_backoff."
    }
  }

  depends_on = [google_project_service.required]
}
