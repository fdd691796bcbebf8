# Inside the cluster: the KubeRay operator (RayCluster/RayJob/RayService CRDs), the NVIDIA device plugin on GPU
# nodes, and the namespace with one service account per workload, each bound to its IAM role (iam.tf).

resource "helm_release" "kuberay_operator" {
  name             = "kuberay-operator"
  namespace        = "kuberay-system"
  create_namespace = true
  repository       = "https://ray-project.github.io/kuberay-helm/"
  chart            = "kuberay-operator"
  version          = "1.5.1"
  atomic           = true

  values = [yamlencode({
    nodeSelector = { "witforge.io/pool" = "cpu" }
  })]

  depends_on = [module.eks]
}

# AL2023 NVIDIA AMIs ship the driver but not the device plugin: without it no pod can request nvidia.com/gpu.
resource "helm_release" "nvidia_device_plugin" {
  name       = "nvidia-device-plugin"
  namespace  = "kube-system"
  repository = "https://nvidia.github.io/k8s-device-plugin"
  chart      = "nvidia-device-plugin"
  version    = "0.17.4"
  atomic     = true

  values = [yamlencode({
    # The chart's default affinity wants node-feature-discovery labels, which EKS nodes do not have.
    affinity     = null
    nodeSelector = { "witforge.io/pool" = "gpu" }
    tolerations  = [{ key = "nvidia.com/gpu", operator = "Exists", effect = "NoSchedule" }]
  })]

  depends_on = [module.eks]
}

resource "kubernetes_namespace_v1" "jobs" {
  metadata {
    name = var.namespace
  }
  depends_on = [module.eks]
}

# A RayJob sets spec.rayClusterSpec.{head,worker}GroupSpecs[].template.spec.serviceAccountName to one of these;
# the EKS pod identity webhook then injects the role's web-identity token, which boto3/s3fs pick up.
resource "kubernetes_service_account_v1" "workload" {
  for_each = local.service_accounts

  metadata {
    name      = each.value
    namespace = kubernetes_namespace_v1.jobs.metadata[0].name
    annotations = {
      "eks.amazonaws.com/role-arn" = aws_iam_role.workload[each.key].arn
    }
  }
}
