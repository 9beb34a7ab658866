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
