# Every input of the stack. README.md has the same list as a table; tests/test_infra_terraform.py keeps the two
# in step and requires a description and a type on each.

variable "name" {
  description = "Name of the stack: the EKS cluster, the VPC and the IAM roles are named after it."
  type        = string
  default     = "witforge"

  validation {
    # 20 keeps the derived bucket names (<name>-data-<account>-<region>-logs) within S3's 63 characters.
    condition     = can(regex("^[a-z][a-z0-9-]{1,19}$", var.name))
    error_message = "name: lowercase letters, digits and dashes, 2-20 characters, starting with a letter."
  }
}

variable "region" {
  description = "AWS region of the bucket, the KMS key and the cluster (keep the data next to the GPUs)."
  type        = string
  default     = "us-east-1"
}

variable "tags" {
  description = "Tags added to every AWS resource (on top of Project and ManagedBy)."
  type        = map(string)
  default     = {}
}

# ---- storage ---------------------------------------------------------------------------------------------

variable "bucket_name" {
  description = "Name of the data bucket; empty: <name>-data-<account id>-<region>. The log bucket is this name plus -logs."
  type        = string
  default     = ""

  validation {
    condition     = var.bucket_name == "" || can(regex("^[a-z0-9][a-z0-9.-]{1,56}[a-z0-9]$", var.bucket_name))
    error_message = "bucket_name: 3-58 lowercase letters, digits, dots and dashes (58 leaves room for the -logs suffix)."
  }
}

variable "storage_prefix" {
  description = "Key prefix inside the data bucket: the project's storage.root is s3://<bucket>/<storage_prefix>."
  type        = string
  default     = "witforge"

  validation {
    condition     = can(regex("^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)*$", var.storage_prefix))
    error_message = "storage_prefix: one or more path segments (letters, digits, . _ -) joined by /, no leading or trailing /."
  }
}

variable "datasets" {
  description = "Dataset names (pipeline.dataset) the crawler may write under <storage_prefix>/<dataset>/ and training may read."
  type        = list(string)
  default     = ["synthweb"]

  validation {
    condition     = length(var.datasets) > 0 && alltrue([for d in var.datasets : can(regex("^[A-Za-z0-9][A-Za-z0-9._-]*$", d))])
    error_message = "datasets: at least one name, each one path segment (letters, digits, . _ -)."
  }
  validation {
    # These prefixes belong to training, evaluation and scratch: a dataset of that name would let the crawler write them.
    condition     = length(setintersection(toset(var.datasets), toset(["checkpoints", "eval", "evalsets", "dashboard", "scratch"]))) == 0
    error_message = "datasets: checkpoints, eval, evalsets, dashboard and scratch are reserved prefixes, not dataset names."
  }
}

variable "crawler_source_object_arns" {
  description = "S3 object ARNs the crawler may read besides its own prefixes (WARC/WAT input); default: Common Crawl's crawl data."
  type        = list(string)
  default     = ["arn:aws:s3:::commoncrawl/crawl-data/*"]

  validation {
    condition     = alltrue([for a in var.crawler_source_object_arns : can(regex("^arn:aws[a-z-]*:s3:::[a-z0-9.-]+/.+$", a))])
    error_message = "crawler_source_object_arns: S3 object ARNs with a key pattern (arn:aws:s3:::bucket/prefix/*), not whole buckets."
  }
}

variable "kms_deletion_window_days" {
  description = "Days a deleted KMS key waits before it is destroyed (and every object it encrypts becomes unreadable)."
  type        = number
  default     = 30

  validation {
    condition     = var.kms_deletion_window_days >= 7 && var.kms_deletion_window_days <= 30
    error_message = "kms_deletion_window_days: AWS accepts 7 to 30."
  }
}

variable "abort_incomplete_multipart_days" {
  description = "Days after which an unfinished multipart upload (a killed shard or checkpoint write) is aborted and its parts freed."
  type        = number
  default     = 3

  validation {
    condition     = var.abort_incomplete_multipart_days >= 1
    error_message = "abort_incomplete_multipart_days: at least 1."
  }
}

variable "scratch_expiration_days" {
  description = "Days objects under <storage_prefix>/scratch/ live (Ray Train run state, ad-hoc exports)."
  type        = number
  default     = 7

  validation {
    condition     = var.scratch_expiration_days >= 1
    error_message = "scratch_expiration_days: at least 1."
  }
}

variable "noncurrent_version_expiration_days" {
  description = "Days an overwritten or deleted object version is kept (the undo window versioning gives) before it is expired."
  type        = number
  default     = 30

  validation {
    condition     = var.noncurrent_version_expiration_days >= 1
    error_message = "noncurrent_version_expiration_days: at least 1."
  }
}

variable "access_log_retention_days" {
  description = "Days S3 server access logs of the data bucket are kept in the log bucket."
  type        = number
  default     = 365

  validation {
    condition     = var.access_log_retention_days >= 1
    error_message = "access_log_retention_days: at least 1."
  }
}

# ---- cluster ---------------------------------------------------------------------------------------------

variable "kubernetes_version" {
  description = "EKS Kubernetes <major>.<minor> version; upgrade one minor version at a time."
  type        = string
  default     = "1.33"
}

variable "availability_zones" {
  description = "AZs of the VPC subnets and node groups, named explicitly: GPU instance types are offered in some AZs only, and the set must not change when AWS adds one."
  type        = list(string)
  default     = ["us-east-1a", "us-east-1b", "us-east-1c"]

  validation {
    condition     = length(var.availability_zones) >= 2 && alltrue([for az in var.availability_zones : startswith(az, var.region)])
    error_message = "availability_zones: at least two (EKS needs two), each in var.region."
  }
}

variable "vpc_cidr" {
  description = "CIDR of the VPC: /20 private subnets (pods take VPC addresses with the VPC CNI) and /24 public ones per AZ."
  type        = string
  default     = "10.0.0.0/16"
}

variable "single_nat_gateway" {
  description = "One NAT gateway for all AZs (cheaper) instead of one per AZ (survives an AZ outage). S3 traffic bypasses NAT via the gateway endpoint."
  type        = bool
  default     = true
}

variable "endpoint_public_access_cidrs" {
  description = "CIDRs allowed to reach the Kubernetes API endpoint from the internet (where terraform, kubectl and ray job submit run); empty: private endpoint only."
  type        = list(string)
  default     = []

  validation {
    condition     = !contains(var.endpoint_public_access_cidrs, "0.0.0.0/0")
    error_message = "endpoint_public_access_cidrs: 0.0.0.0/0 opens the API endpoint to the internet; list your own CIDRs."
  }
}

variable "namespace" {
  description = "Kubernetes namespace of the Ray jobs and of the crawler/training/evaluation service accounts."
  type        = string
  default     = "witforge"
}

variable "cpu_instance_types" {
  description = "Instance types of the CPU node group (Ray head, Spark and curation stages, evaluation without GPUs)."
  type        = list(string)
  default     = ["m7i.4xlarge"]
}

variable "cpu_node_count" {
  description = "Sizes of the CPU node group: min, max and desired (desired is only read at creation; the autoscaler owns it after)."
  type        = object({ min = number, max = number, desired = number })
  default     = { min = 1, max = 10, desired = 2 }
}

variable "gpu_instance_types" {
  description = "Instance types of the GPU node group (training, GPU embedding and evaluation)."
  type        = list(string)
  default     = ["p5.48xlarge"]
}

variable "gpu_node_count" {
  description = "Sizes of the GPU node group: min, max and desired (0 desired: no GPU bill until a job needs one and the group is scaled up)."
  type        = object({ min = number, max = number, desired = number })
  default     = { min = 0, max = 2, desired = 0 }
}

variable "gpu_capacity_type" {
  description = "ON_DEMAND, SPOT or CAPACITY_BLOCK for the GPU node group (training resumes from its checkpoints after a spot reclaim)."
  type        = string
  default     = "ON_DEMAND"

  validation {
    condition     = contains(["ON_DEMAND", "SPOT", "CAPACITY_BLOCK"], var.gpu_capacity_type)
    error_message = "gpu_capacity_type: ON_DEMAND, SPOT or CAPACITY_BLOCK."
  }
}

variable "cpu_disk_gb" {
  description = "Root volume of a CPU node in GiB (container images, Spark shuffle, local scratch before publishing)."
  type        = number
  default     = 200
}

variable "gpu_disk_gb" {
  description = "Root volume of a GPU node in GiB (CUDA images are large; shards stream from S3 and are not cached)."
  type        = number
  default     = 500
}
