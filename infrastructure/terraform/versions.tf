terraform {
  required_version = ">= 1.5.0, < 2.0.0"

  required_providers {
    google = {
      source = "hashicorp/google"
      # 6.12 added the `urls` attribute of google_cloud_run_v2_service, which the
      # postcondition in cloud_run.tf reads.
      version = ">= 6.12, < 8.0"
    }
  }
}

provider "google" {
  project = var.project_id
  region  = var.region
}
