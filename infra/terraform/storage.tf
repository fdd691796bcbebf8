# The bucket the project uses as storage.root = s3://<bucket>/<storage_prefix>, its KMS key, and the bucket that
# keeps its access logs. Prefixes under the root follow the project's layout (pipelines/layout.py, README):
#   <root>/<dataset>/<version>/   shards + manifest (crawler writes; training reads)
#   <root>/checkpoints/<run>/     checkpoints (training writes; evaluation and model-based curation read)
#   <root>/evalsets/<name>/       external evaluation datasets (operators upload; evaluation reads)
#   <root>/eval/results/          result rows (evaluation writes)
#   <root>/dashboard/             the static dashboard (evaluation writes)
#   <root>/scratch/<role>/        disposable state (Ray Train run dirs, ad-hoc exports), expired by lifecycle

locals {
  bucket_name     = var.bucket_name != "" ? var.bucket_name : "${var.name}-data-${data.aws_caller_identity.current.account_id}-${var.region}"
  log_bucket_name = "${local.bucket_name}-logs"
  storage_root    = "s3://${local.bucket_name}/${var.storage_prefix}"
}

# ---- KMS key for the data bucket -------------------------------------------------------------------------

resource "aws_kms_key" "data" {
  description             = "${var.name}: SSE-KMS for s3://${local.bucket_name}"
  enable_key_rotation     = true
  rotation_period_in_days = 365
  deletion_window_in_days = var.kms_deletion_window_days
  policy                  = data.aws_iam_policy_document.kms_data.json
}

resource "aws_kms_alias" "data" {
  name          = "alias/${var.name}-data"
  target_key_id = aws_kms_key.data.key_id
}

data "aws_iam_policy_document" "kms_data" {
  #checkov:skip=CKV_AWS_109:This is a key policy: "*" is this key alone. The account-root statement is AWS's default and hands access control to IAM, where each role gets only Decrypt/GenerateDataKey via S3.
  #checkov:skip=CKV_AWS_111:Same key policy: the only principal is this account's root, i.e. IAM policies decide; no other account or service is granted anything.
  #checkov:skip=CKV_AWS_356:Same key policy: in a key policy the resource "*" means the key itself, it cannot name its own ARN.
  statement {
    sid       = "AccountAdministersThroughIAM"
    actions   = ["kms:*"]
    resources = ["*"]
    principals {
      type        = "AWS"
      identifiers = ["arn:${data.aws_partition.current.partition}:iam::${data.aws_caller_identity.current.account_id}:root"]
    }
  }
}

# ---- data bucket -----------------------------------------------------------------------------------------

resource "aws_s3_bucket" "data" {
  #checkov:skip=CKV_AWS_144:Cross-region replication doubles storage for data that is rebuilt from its sources and config (datasets) or re-trained; versioning covers accidental overwrite and delete.
  #checkov:skip=CKV2_AWS_62:Nothing consumes S3 events: consumers open manifest.json and latest.json, which are written last, instead of reacting to object events.
  bucket = local.bucket_name
}

resource "aws_s3_bucket_ownership_controls" "data" {
  bucket = aws_s3_bucket.data.id
  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

resource "aws_s3_bucket_public_access_block" "data" {
  bucket                  = aws_s3_bucket.data.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_versioning" "data" {
  bucket = aws_s3_bucket.data.id
  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "data" {
  bucket = aws_s3_bucket.data.id
  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm     = "aws:kms"
      kms_master_key_id = aws_kms_key.data.arn
    }
    # One KMS call per bucket key instead of one per object: shards and their parts are many objects.
    bucket_key_enabled = true
  }
}

resource "aws_s3_bucket_logging" "data" {
  bucket        = aws_s3_bucket.data.id
  target_bucket = aws_s3_bucket.logs.id
  target_prefix = "s3-access/"
  target_object_key_format {
    partitioned_prefix {
      partition_date_source = "EventTime"
    }
  }
  depends_on = [aws_s3_bucket_policy.logs]
}

resource "aws_s3_bucket_lifecycle_configuration" "data" {
  bucket = aws_s3_bucket.data.id

  # s3fs uploads shards and checkpoints above its block size as multipart uploads; a killed writer leaves parts
  # that are billed but invisible. The rerun writes the object again, so the parts can go.
  rule {
    id     = "abort-incomplete-multipart-uploads"
    status = "Enabled"
    filter {}
    abort_incomplete_multipart_upload {
      days_after_initiation = var.abort_incomplete_multipart_days
    }
  }

  rule {
    id     = "expire-scratch"
    status = "Enabled"
    filter {
      prefix = "${var.storage_prefix}/scratch/"
    }
    expiration {
      days = var.scratch_expiration_days
    }
    noncurrent_version_expiration {
      noncurrent_days = 1
    }
  }

  # Versioning keeps every overwritten object (eval rows, latest.json, the dashboard): bound the undo window.
  rule {
    id     = "expire-noncurrent-versions"
    status = "Enabled"
    filter {}
    noncurrent_version_expiration {
      noncurrent_days = var.noncurrent_version_expiration_days
    }
    expiration {
      expired_object_delete_marker = true
    }
  }

  depends_on = [aws_s3_bucket_versioning.data]
}

resource "aws_s3_bucket_policy" "data" {
  bucket = aws_s3_bucket.data.id
  policy = data.aws_iam_policy_document.data_bucket.json
  # The public access block must exist first, or a policy could briefly make the bucket public.
  depends_on = [aws_s3_bucket_public_access_block.data]
}

data "aws_iam_policy_document" "data_bucket" {
  statement {
    sid       = "DenyInsecureTransport"
    effect    = "Deny"
    actions   = ["s3:*"]
    resources = [aws_s3_bucket.data.arn, "${aws_s3_bucket.data.arn}/*"]
    principals {
      type        = "*"
      identifiers = ["*"]
    }
    condition {
      test     = "Bool"
      variable = "aws:SecureTransport"
      values   = ["false"]
    }
  }

  # Default encryption covers writers that name no encryption (s3fs); this refuses one that asks for another.
  statement {
    sid       = "DenyOtherEncryption"
    effect    = "Deny"
    actions   = ["s3:PutObject"]
    resources = ["${aws_s3_bucket.data.arn}/*"]
    principals {
      type        = "*"
      identifiers = ["*"]
    }
    condition {
      test     = "StringNotEqualsIfExists"
      variable = "s3:x-amz-server-side-encryption"
      values   = ["aws:kms"]
    }
  }
}

# ---- access-log bucket -----------------------------------------------------------------------------------

resource "aws_s3_bucket" "logs" {
  #checkov:skip=CKV_AWS_18:This is the access-log target; logging it into itself would log every log delivery.
  #checkov:skip=CKV_AWS_144:Access logs are audit records of one region's bucket; replication doubles their cost for no recovery need.
  #checkov:skip=CKV2_AWS_62:Nothing consumes events of log delivery.
  #checkov:skip=CKV_AWS_145:S3 server access logging cannot deliver to a bucket whose default encryption is SSE-KMS (AWS documents SSE-S3 only), so this bucket uses SSE-S3 (AES256).
  bucket = local.log_bucket_name
}

resource "aws_s3_bucket_ownership_controls" "logs" {
  bucket = aws_s3_bucket.logs.id
  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

resource "aws_s3_bucket_public_access_block" "logs" {
  bucket                  = aws_s3_bucket.logs.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_versioning" "logs" {
  bucket = aws_s3_bucket.logs.id
  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "logs" {
  bucket = aws_s3_bucket.logs.id
  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm = "AES256"
    }
  }
}

resource "aws_s3_bucket_lifecycle_configuration" "logs" {
  bucket = aws_s3_bucket.logs.id

  rule {
    id     = "abort-incomplete-multipart-uploads"
    status = "Enabled"
    filter {}
    abort_incomplete_multipart_upload {
      days_after_initiation = var.abort_incomplete_multipart_days
    }
  }

  rule {
    id     = "expire-access-logs"
    status = "Enabled"
    filter {}
    expiration {
      days = var.access_log_retention_days
    }
    noncurrent_version_expiration {
      noncurrent_days = 1
    }
  }

  depends_on = [aws_s3_bucket_versioning.logs]
}

resource "aws_s3_bucket_policy" "logs" {
  bucket     = aws_s3_bucket.logs.id
  policy     = data.aws_iam_policy_document.logs_bucket.json
  depends_on = [aws_s3_bucket_public_access_block.logs]
}

data "aws_iam_policy_document" "logs_bucket" {
  # With BucketOwnerEnforced, log delivery is granted by bucket policy (ACL grants are ignored).
  statement {
    sid       = "S3ServerAccessLogsFromDataBucket"
    actions   = ["s3:PutObject"]
    resources = ["${aws_s3_bucket.logs.arn}/s3-access/*"]
    principals {
      type        = "Service"
      identifiers = ["logging.s3.amazonaws.com"]
    }
    condition {
      test     = "ArnEquals"
      variable = "aws:SourceArn"
      values   = [aws_s3_bucket.data.arn]
    }
    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [data.aws_caller_identity.current.account_id]
    }
  }

  statement {
    sid       = "DenyInsecureTransport"
    effect    = "Deny"
    actions   = ["s3:*"]
    resources = [aws_s3_bucket.logs.arn, "${aws_s3_bucket.logs.arn}/*"]
    principals {
      type        = "*"
      identifiers = ["*"]
    }
    condition {
      test     = "Bool"
      variable = "aws:SecureTransport"
      values   = ["false"]
    }
  }
}
