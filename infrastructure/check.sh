#!/usr/bin/env bash
# Offline check of the Terraform formatting, for CI. The rules about resources and IAM are the
# Rego policies in infrastructure/policy, run by `cargo test --test terraform`; `terraform
# validate` needs the google provider, which CI cannot download (see infrastructure/README.md).
set -euo pipefail

cd "$(dirname "$0")/.."

if ! command -v terraform >/dev/null 2>&1; then
    echo "infrastructure/check.sh: terraform fmt check SKIPPED: terraform is not installed"
    exit 0
fi

echo "infrastructure/check.sh: terraform fmt -check -recursive infrastructure/terraform"
if ! terraform fmt -check -recursive infrastructure/terraform; then
    echo "infrastructure/check.sh: files above need formatting; run: terraform fmt -recursive infrastructure/terraform" >&2
    exit 1
fi
