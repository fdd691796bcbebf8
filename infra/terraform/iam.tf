# One IAM role per workload, assumed through IRSA by exactly one Kubernetes service account (a RayJob sets
# serviceAccountName on its head and worker pods). Each role reaches only its own prefixes of the data bucket:
#
#   role        reads                                      writes (and reads back)
#   crawler     checkpoints/ (model-based curation),       <dataset>/ for each of var.datasets, scratch/crawler/
#               crawler_source_object_arns (WARC input)
#   training    <dataset>/ for each of var.datasets        checkpoints/, scratch/training/
#   evaluation  checkpoints/, evalsets/ (external eval     eval/, dashboard/, scratch/evaluation/
#               datasets, uploaded by operators)
#
# No role may delete outside its own prefixes, delete object versions or touch bucket configuration.
# tests/test_infra_terraform.py evaluates these documents and checks the table above.

locals {
  service_accounts = {
    crawler    = "witforge-crawler"
    training   = "witforge-training"
    evaluation = "witforge-evaluation"
  }
  # What s3fs does when it publishes an object: a single PUT, or a multipart upload (create/upload/complete all
  # need s3:PutObject) that it aborts if the writer fails. Reading back is part of resuming (markers, latest.json).
  s3_read_actions  = ["s3:GetObject"]
  s3_write_actions = ["s3:GetObject", "s3:PutObject", "s3:AbortMultipartUpload"]
  # Only on prefixes a role owns outright: its dataset prefixes (crawler) and its own scratch.
  s3_owner_actions = ["s3:GetObject", "s3:PutObject", "s3:AbortMultipartUpload", "s3:DeleteObject"]
}

data "aws_iam_policy_document" "irsa_trust" {
  for_each = local.service_accounts

  statement {
    actions = ["sts:AssumeRoleWithWebIdentity"]
    principals {
      type        = "Federated"
      identifiers = [module.eks.oidc_provider_arn]
    }
    condition {
      test     = "StringEquals"
      variable = "${module.eks.oidc_provider}:sub"
      values   = ["system:serviceaccount:${var.namespace}:${each.value}"]
    }
    condition {
      test     = "StringEquals"
      variable = "${module.eks.oidc_provider}:aud"
      values   = ["sts.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "workload" {
  for_each = local.service_accounts

  name                 = "${var.name}-${each.key}"
  description          = "witforge ${each.key}: IRSA role of ${var.namespace}/${each.value}"
  assume_role_policy   = data.aws_iam_policy_document.irsa_trust[each.key].json
  max_session_duration = 3600
}

# S3 encrypts and decrypts with the bucket's key on the caller's behalf: writers need GenerateDataKey (and Decrypt,
# which multipart uploads use), readers Decrypt; neither works outside S3 calls.
data "aws_iam_policy_document" "kms_through_s3" {
  statement {
    sid       = "BucketKeyThroughS3Only"
    actions   = ["kms:Decrypt", "kms:GenerateDataKey"]
    resources = [aws_kms_key.data.arn]
    condition {
      test     = "StringEquals"
      variable = "kms:ViaService"
      values   = ["s3.${var.region}.amazonaws.com"]
    }
  }
}

# ---- crawler (python -m pipelines.build) -----------------------------------------------------------------

data "aws_iam_policy_document" "crawler" {
  source_policy_documents = [data.aws_iam_policy_document.kms_through_s3.json]

  dynamic "statement" {
    for_each = toset(var.datasets)
    content {
      actions   = ["s3:ListBucket"]
      resources = [aws_s3_bucket.data.arn]
      condition {
        test     = "StringLike"
        variable = "s3:prefix"
        values   = ["${var.storage_prefix}/${statement.value}", "${var.storage_prefix}/${statement.value}/*"]
      }
    }
  }

  # A rerun removes the parts of a stage it is about to redo (download retries, balance drop parts).
  dynamic "statement" {
    for_each = toset(var.datasets)
    content {
      actions   = local.s3_owner_actions
      resources = ["${aws_s3_bucket.data.arn}/${var.storage_prefix}/${statement.value}/*"]
    }
  }

  statement {
    sid       = "ListCheckpointsAndScratch"
    actions   = ["s3:ListBucket"]
    resources = [aws_s3_bucket.data.arn]
    condition {
      test     = "StringLike"
      variable = "s3:prefix"
      values = [
        "${var.storage_prefix}/checkpoints", "${var.storage_prefix}/checkpoints/*",
        "${var.storage_prefix}/scratch/crawler", "${var.storage_prefix}/scratch/crawler/*",
      ]
    }
  }

  # SemDeDup, the CLIP-score filter and decontamination load a trained checkpoint (pipeline.*.checkpoint).
  statement {
    sid       = "ReadCheckpoints"
    actions   = local.s3_read_actions
    resources = ["${aws_s3_bucket.data.arn}/${var.storage_prefix}/checkpoints/*"]
  }

  statement {
    sid       = "OwnScratch"
    actions   = local.s3_owner_actions
    resources = ["${aws_s3_bucket.data.arn}/${var.storage_prefix}/scratch/crawler/*"]
  }

  dynamic "statement" {
    for_each = toset(var.crawler_source_object_arns)
    content {
      actions   = local.s3_read_actions
      resources = [statement.value]
    }
  }
}

# ---- training (python -m training.train) -----------------------------------------------------------------

data "aws_iam_policy_document" "training" {
  source_policy_documents = [data.aws_iam_policy_document.kms_through_s3.json]

  dynamic "statement" {
    for_each = toset(var.datasets)
    content {
      actions   = ["s3:ListBucket"]
      resources = [aws_s3_bucket.data.arn]
      condition {
        test     = "StringLike"
        variable = "s3:prefix"
        values   = ["${var.storage_prefix}/${statement.value}", "${var.storage_prefix}/${statement.value}/*"]
      }
    }
  }

  dynamic "statement" {
    for_each = toset(var.datasets)
    content {
      actions   = local.s3_read_actions
      resources = ["${aws_s3_bucket.data.arn}/${var.storage_prefix}/${statement.value}/*"]
    }
  }

  statement {
    sid       = "ListCheckpointsAndScratch"
    actions   = ["s3:ListBucket"]
    resources = [aws_s3_bucket.data.arn]
    condition {
      test     = "StringLike"
      variable = "s3:prefix"
      values = [
        "${var.storage_prefix}/checkpoints", "${var.storage_prefix}/checkpoints/*",
        "${var.storage_prefix}/scratch/training", "${var.storage_prefix}/scratch/training/*",
      ]
    }
  }

  # Checkpoints are only ever added (a fresh run refuses to overwrite one that has checkpoints): no delete.
  statement {
    sid       = "WriteCheckpoints"
    actions   = local.s3_write_actions
    resources = ["${aws_s3_bucket.data.arn}/${var.storage_prefix}/checkpoints/*"]
  }

  # Ray Train's own run state (RunConfig.storage_path) when a job points it here; Ray prunes it itself.
  statement {
    sid       = "OwnScratch"
    actions   = local.s3_owner_actions
    resources = ["${aws_s3_bucket.data.arn}/${var.storage_prefix}/scratch/training/*"]
  }
}

# ---- evaluation (python -m evaluation.run, python -m evaluation.dashboard) -------------------------------

data "aws_iam_policy_document" "evaluation" {
  source_policy_documents = [data.aws_iam_policy_document.kms_through_s3.json]

  statement {
    sid       = "ListOwnPrefixes"
    actions   = ["s3:ListBucket"]
    resources = [aws_s3_bucket.data.arn]
    condition {
      test     = "StringLike"
      variable = "s3:prefix"
      values = [
        "${var.storage_prefix}/checkpoints", "${var.storage_prefix}/checkpoints/*",
        "${var.storage_prefix}/evalsets", "${var.storage_prefix}/evalsets/*",
        "${var.storage_prefix}/eval", "${var.storage_prefix}/eval/*",
        "${var.storage_prefix}/dashboard", "${var.storage_prefix}/dashboard/*",
        "${var.storage_prefix}/scratch/evaluation", "${var.storage_prefix}/scratch/evaluation/*",
      ]
    }
  }

  # External evaluation datasets (evaluation.external, CLIP_benchmark's WebDataset layout) are inputs: read only.
  statement {
    sid     = "ReadCheckpointsAndEvalsets"
    actions = local.s3_read_actions
    resources = [
      "${aws_s3_bucket.data.arn}/${var.storage_prefix}/checkpoints/*",
      "${aws_s3_bucket.data.arn}/${var.storage_prefix}/evalsets/*",
    ]
  }

  # Result rows are rewritten in place when a (checkpoint, dataset) pair is rerun; the page is republished.
  statement {
    sid     = "WriteResultsAndDashboard"
    actions = local.s3_write_actions
    resources = [
      "${aws_s3_bucket.data.arn}/${var.storage_prefix}/eval/*",
      "${aws_s3_bucket.data.arn}/${var.storage_prefix}/dashboard/*",
    ]
  }

  statement {
    sid       = "OwnScratch"
    actions   = local.s3_owner_actions
    resources = ["${aws_s3_bucket.data.arn}/${var.storage_prefix}/scratch/evaluation/*"]
  }
}

resource "aws_iam_role_policy" "crawler" {
  name   = "witforge-storage"
  role   = aws_iam_role.workload["crawler"].id
  policy = data.aws_iam_policy_document.crawler.json
}

resource "aws_iam_role_policy" "training" {
  name   = "witforge-storage"
  role   = aws_iam_role.workload["training"].id
  policy = data.aws_iam_policy_document.training.json
}

resource "aws_iam_role_policy" "evaluation" {
  name   = "witforge-storage"
  role   = aws_iam_role.workload["evaluation"].id
  policy = data.aws_iam_policy_document.evaluation.json
}
