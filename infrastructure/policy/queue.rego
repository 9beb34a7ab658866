package main

import rego.v1

deny contains "google_cloud_tasks_queue: none declared; declare the queue the backend enqueues to (queue.tf)" if {
	count(resources_of("google_cloud_tasks_queue")) == 0
}

# Rate limits, retries and dispatch logging are chosen for slow, costly extractions, not inherited
# from Cloud Tasks' defaults.
deny contains msg if {
	some name, queue in resources_of("google_cloud_tasks_queue")
	some block in ["rate_limits", "retry_config", "stackdriver_logging_config"]
	not queue[block]
	msg := sprintf("google_cloud_tasks_queue.%s: no %s block; add one so the queue does not run on Cloud Tasks' defaults", [name, block])
}

# A document claimed by an instance that died stays claimed for the claim's lifetime (35 minutes:
# docs/RECEIVING.md's pattern and the example backend's CLAIM_TTL), and every delivery meanwhile
# is answered "retry later". The queue must still be retrying one backoff after the claim expires,
# or the task runs out and the document is never processed. Cloud Tasks stops retrying only once
# both max_attempts and max_retry_duration are reached; -1 attempts never stops.
claim_ttl_seconds := 2100

deny contains msg if {
	some name, queue in resources_of("google_cloud_tasks_queue")
	retry := queue.retry_config[0]
	resolved(retry.max_attempts) != -1
	max_backoff := duration_seconds(resolved(retry.max_backoff))
	window := object.get(retry, "max_retry_duration", "0s")
	duration_seconds(resolved(window)) < claim_ttl_seconds + max_backoff
	msg := sprintf("google_cloud_tasks_queue.%s: retry_config.max_retry_duration %v ends retries before a crashed instance's 35-minute claim expires and one max_backoff (%vs) passes, so that document is never processed; set it (or its variable's default) to at least \"%vs\", or max_attempts to -1", [name, resolved(window), max_backoff, claim_ttl_seconds + max_backoff])
}
