variable "project_id" {
  description = "ID of the Google Cloud project that holds the queue, the service accounts and the Cloud Run service (GCP_PROJECT_ID)."
  type        = string

  validation {
    # 6-30 characters, optionally prefixed by a domain for domain-scoped projects ("example.com:my-project").
    condition     = can(regex("^([a-z0-9.-]+:)?[a-z][a-z0-9-]{4,28}[a-z0-9]$", var.project_id))
    error_message = "project_id must be a project ID (6-30 lowercase letters, digits and hyphens, starting with a letter), not a project name or number."
  }
}

variable "region" {
  description = "Region of both the Cloud Tasks queue and the Cloud Run service (GCP_LOCATION), e.g. europe-west1."
  type        = string

  validation {
    condition     = can(regex("^[a-z]+-[a-z]+[0-9]+$", var.region))
    error_message = "region must be a region name such as europe-west1 or us-central1, not a zone."
  }
}

variable "queue_name" {
  description = "ID of the Cloud Tasks queue (CLOUD_TASKS_QUEUE). A deleted queue's ID cannot be reused for about 7 days."
  type        = string
  default     = "document-processing"

  validation {
    condition     = can(regex("^[A-Za-z0-9-]{1,100}$", var.queue_name))
    error_message = "queue_name must be 1-100 letters, digits or hyphens."
  }
}

variable "service_name" {
  description = "Name of the backend's Cloud Run service. Also part of its deterministic URL https://SERVICE-PROJECT_NUMBER.REGION.run.app."
  type        = string
  default     = "document-backend"

  validation {
    # At most 49 characters keeps SERVICE-PROJECT_NUMBER within one 63-character DNS label,
    # which is what makes the deterministic URL exist.
    condition     = can(regex("^[a-z]([a-z0-9-]{0,47}[a-z0-9])?$", var.service_name))
    error_message = "service_name must be 1-49 lowercase letters, digits or hyphens, start with a letter and not end with a hyphen."
  }
}

variable "container_image" {
  description = "Container image of the backend, as REGISTRY_HOST/PATH/IMAGE@sha256:DIGEST. Pin a digest for reproducible deploys."
  type        = string

  validation {
    condition     = can(regex("^[^[:space:]]+$", var.container_image))
    error_message = "container_image must be a non-empty image reference without whitespace."
  }
}

variable "runtime_account_id" {
  description = "Account ID of the service account the backend runs as. It enqueues tasks."
  type        = string
  default     = "document-backend"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{4,28}[a-z0-9]$", var.runtime_account_id))
    error_message = "runtime_account_id must be 6-30 lowercase letters, digits or hyphens, starting with a letter."
  }
}

variable "invoker_account_id" {
  description = "Account ID of the service account whose OIDC token Cloud Tasks presents to the backend (CLOUD_RUN_SERVICE_ACCOUNT)."
  type        = string
  default     = "document-tasks-invoker"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{4,28}[a-z0-9]$", var.invoker_account_id))
    error_message = "invoker_account_id must be 6-30 lowercase letters, digits or hyphens, starting with a letter."
  }
}

variable "request_timeout" {
  description = "Cloud Run request timeout. It must be at least the tasks' dispatch deadline (600s, set by the client on each task), or Cloud Run cuts the handler off before Cloud Tasks gives up on the attempt."
  type        = string
  default     = "900s"

  validation {
    condition = can(regex("^[0-9]+s$", var.request_timeout)) && try(
      tonumber(trimsuffix(var.request_timeout, "s")) >= 600 && tonumber(trimsuffix(var.request_timeout, "s")) <= 3600,
      false
    )
    error_message = "request_timeout must be whole seconds such as \"900s\", between \"600s\" (the tasks' dispatch deadline) and \"3600s\" (the Cloud Run maximum)."
  }
}

variable "ingress" {
  description = "Cloud Run ingress. INGRESS_TRAFFIC_INTERNAL_ONLY is enough if only Cloud Tasks (same project) calls the service; users reaching the API directly need INGRESS_TRAFFIC_ALL. Either way every request needs an identity with roles/run.invoker."
  type        = string
  default     = "INGRESS_TRAFFIC_ALL"

  validation {
    condition     = contains(["INGRESS_TRAFFIC_ALL", "INGRESS_TRAFFIC_INTERNAL_ONLY", "INGRESS_TRAFFIC_INTERNAL_LOAD_BALANCER"], var.ingress)
    error_message = "ingress must be INGRESS_TRAFFIC_ALL, INGRESS_TRAFFIC_INTERNAL_ONLY or INGRESS_TRAFFIC_INTERNAL_LOAD_BALANCER."
  }
}

variable "deletion_protection" {
  description = "Refuse to destroy the Cloud Run service. Set to false before `terraform destroy`."
  type        = bool
  default     = true
}

# Queue settings. Document extraction is slow and each attempt costs money, so the defaults
# dispatch gently and give up after a few attempts instead of retrying for hours.

variable "queue_max_dispatches_per_second" {
  description = "Maximum rate at which the queue starts tasks."
  type        = number
  default     = 1

  validation {
    condition     = var.queue_max_dispatches_per_second > 0 && var.queue_max_dispatches_per_second <= 500
    error_message = "queue_max_dispatches_per_second must be greater than 0 and at most 500."
  }
}

variable "queue_max_concurrent_dispatches" {
  description = "Maximum number of tasks in flight at once, i.e. concurrent extractions."
  type        = number
  default     = 5

  validation {
    condition     = var.queue_max_concurrent_dispatches >= 1 && var.queue_max_concurrent_dispatches <= 5000 && floor(var.queue_max_concurrent_dispatches) == var.queue_max_concurrent_dispatches
    error_message = "queue_max_concurrent_dispatches must be a whole number from 1 to 5000."
  }
}

variable "queue_max_attempts" {
  description = "Attempts per task, the first one included; -1 means unlimited."
  type        = number
  default     = 5

  validation {
    condition     = (var.queue_max_attempts == -1 || var.queue_max_attempts >= 1) && floor(var.queue_max_attempts) == var.queue_max_attempts
    error_message = "queue_max_attempts must be -1 (unlimited) or a whole number of at least 1."
  }
}

variable "queue_max_retry_duration" {
  description = "Time limit for retrying a task, from its first attempt. Retrying stops only once both this and queue_max_attempts are reached. A document claimed by an instance that died stays claimed for 35 minutes (docs/RECEIVING.md), and every delivery meanwhile is answered \"retry later\": the default hour keeps retrying until a crash during any of the first five attempts has expired, where attempts alone would stop after 7.5 minutes and leave the document unprocessed. The policy refuses less than the claim plus queue_max_backoff."
  type        = string
  default     = "3600s"

  validation {
    condition     = can(regex("^[0-9]+(\\.[0-9]{1,9})?s$", var.queue_max_retry_duration))
    error_message = "queue_max_retry_duration must be a duration in seconds such as \"0s\" or \"3600s\"."
  }
}

variable "queue_min_backoff" {
  description = "Wait before the first retry of a failed task."
  type        = string
  default     = "30s"

  validation {
    condition     = can(regex("^[0-9]+(\\.[0-9]{1,9})?s$", var.queue_min_backoff))
    error_message = "queue_min_backoff must be a duration in seconds such as \"30s\"."
  }
}

variable "queue_max_backoff" {
  description = "Longest wait between two retries of a task."
  type        = string
  default     = "600s"

  validation {
    condition     = can(regex("^[0-9]+(\\.[0-9]{1,9})?s$", var.queue_max_backoff))
    error_message = "queue_max_backoff must be a duration in seconds such as \"600s\"."
  }
}

variable "queue_max_doublings" {
  description = "Times the backoff doubles before it grows linearly up to queue_max_backoff."
  type        = number
  default     = 4

  validation {
    condition     = var.queue_max_doublings >= 0 && floor(var.queue_max_doublings) == var.queue_max_doublings
    error_message = "queue_max_doublings must be a whole number of at least 0."
  }
}

variable "queue_logging_sampling_ratio" {
  description = "Fraction of task dispatches written to Cloud Logging (0 to 1). Volumes here are low, so all are logged by default."
  type        = number
  default     = 1

  validation {
    condition     = var.queue_logging_sampling_ratio >= 0 && var.queue_logging_sampling_ratio <= 1
    error_message = "queue_logging_sampling_ratio must be between 0 and 1."
  }
}
