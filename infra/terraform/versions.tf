# Exact pins: an upgrade is a reviewed one-line diff, and `terraform init` writes .terraform.lock.hcl with the
# provider checksums (commit it). tests/test_infra_terraform.py rejects any range constraint here.
terraform {
  required_version = ">= 1.10.0"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = "6.39.0"
    }
    helm = {
      source  = "hashicorp/helm"
      version = "3.1.1"
    }
    kubernetes = {
      source  = "hashicorp/kubernetes"
      version = "3.0.1"
    }
  }
}
