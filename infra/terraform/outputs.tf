output "storage_root" {
  description = "The project's storage.root for this stack: pass storage.root=<this> to every entry point."
  value       = local.storage_root
}

output "data_bucket" {
  description = "Name of the data bucket (SSE-KMS, versioned, access-logged)."
  value       = aws_s3_bucket.data.id
}

output "log_bucket" {
  description = "Name of the bucket receiving the data bucket's S3 server access logs (under s3-access/)."
  value       = aws_s3_bucket.logs.id
}

output "kms_key_arn" {
  description = "ARN of the KMS key encrypting the data bucket (rotated yearly)."
  value       = aws_kms_key.data.arn
}

output "namespace" {
  description = "Kubernetes namespace for the Ray jobs."
  value       = kubernetes_namespace_v1.jobs.metadata[0].name
}

output "service_accounts" {
  description = "Service account per workload (crawler, training, evaluation): set it as serviceAccountName on the RayJob's pods."
  value       = local.service_accounts
}

output "role_arns" {
  description = "IAM role ARN per workload, each assumable only by its service account."
  value       = { for k, r in aws_iam_role.workload : k => r.arn }
}

output "cluster_name" {
  description = "Name of the EKS cluster."
  value       = module.eks.cluster_name
}

output "cluster_endpoint" {
  description = "Kubernetes API endpoint of the cluster."
  value       = module.eks.cluster_endpoint
}

output "kubeconfig_command" {
  description = "Command that writes a kubeconfig entry for the cluster."
  value       = "aws eks update-kubeconfig --region ${var.region} --name ${module.eks.cluster_name}"
}

output "kuberay_operator_version" {
  description = "Version of the KubeRay operator chart installed."
  value       = helm_release.kuberay_operator.version
}
