# The compute: a VPC and an EKS cluster from the terraform-aws-modules (exact versions), with one CPU and one
# GPU managed node group. GPU nodes carry a NoSchedule taint so only pods that ask for GPUs (and tolerate it)
# land on them; Ray GPU worker groups add the toleration (see README).

module "vpc" {
  #checkov:skip=CKV_TF_1:Registry module pinned to an exact release (version below, enforced by tests/test_infra_terraform.py); the registry serves immutable releases, so a commit hash adds nothing.
  source  = "terraform-aws-modules/vpc/aws"
  version = "6.6.1"

  name = var.name
  cidr = var.vpc_cidr
  azs  = var.availability_zones

  # Large private subnets: with the VPC CNI every pod takes an address from its node's subnet.
  private_subnets = [for i, _ in var.availability_zones : cidrsubnet(var.vpc_cidr, 4, i)]
  public_subnets  = [for i, _ in var.availability_zones : cidrsubnet(var.vpc_cidr, 8, 48 + i)]

  enable_nat_gateway     = true
  single_nat_gateway     = var.single_nat_gateway
  one_nat_gateway_per_az = !var.single_nat_gateway
  enable_dns_hostnames   = true
  enable_dns_support     = true

  # Nothing should use the default security group: strip its rules.
  manage_default_security_group  = true
  default_security_group_ingress = []
  default_security_group_egress  = []

  enable_flow_log                                 = true
  create_flow_log_cloudwatch_log_group            = true
  create_flow_log_cloudwatch_iam_role             = true
  flow_log_cloudwatch_log_group_retention_in_days = 90

  public_subnet_tags  = { "kubernetes.io/role/elb" = "1" }
  private_subnet_tags = { "kubernetes.io/role/internal-elb" = "1" }
}

# Shards, checkpoints and results go to S3 through this gateway endpoint, not the NAT gateway: no per-GB NAT
# charge and no internet path for the data.
resource "aws_vpc_endpoint" "s3" {
  vpc_id            = module.vpc.vpc_id
  service_name      = "com.amazonaws.${var.region}.s3"
  vpc_endpoint_type = "Gateway"
  route_table_ids   = module.vpc.private_route_table_ids
}

module "eks" {
  #checkov:skip=CKV_TF_1:Registry module pinned to an exact release (version below, enforced by tests/test_infra_terraform.py); the registry serves immutable releases, so a commit hash adds nothing.
  source  = "terraform-aws-modules/eks/aws"
  version = "21.29.0"

  name               = var.name
  kubernetes_version = var.kubernetes_version

  vpc_id     = module.vpc.vpc_id
  subnet_ids = module.vpc.private_subnets

  # Private endpoint always; the public one only for the CIDRs listed (terraform/kubectl/ray job submit hosts).
  endpoint_private_access      = true
  endpoint_public_access       = length(var.endpoint_public_access_cidrs) > 0
  endpoint_public_access_cidrs = var.endpoint_public_access_cidrs

  # IRSA: the crawler/training/evaluation roles in iam.tf trust this cluster's OIDC provider.
  enable_irsa                              = true
  authentication_mode                      = "API"
  enable_cluster_creator_admin_permissions = true
  enabled_log_types                        = ["api", "audit", "authenticator"]

  addons = {
    # Pod networking must be up before nodes join, or they stay NotReady.
    vpc-cni    = { before_compute = true }
    kube-proxy = {}
    coredns    = {}
  }

  eks_managed_node_groups = {
    cpu = {
      ami_type       = "AL2023_x86_64_STANDARD"
      instance_types = var.cpu_instance_types
      capacity_type  = "ON_DEMAND"
      min_size       = var.cpu_node_count.min
      max_size       = var.cpu_node_count.max
      desired_size   = var.cpu_node_count.desired

      labels = { "witforge.io/pool" = "cpu" }

      block_device_mappings = {
        xvda = {
          device_name = "/dev/xvda"
          ebs = {
            volume_size           = var.cpu_disk_gb
            volume_type           = "gp3"
            encrypted             = true
            delete_on_termination = true
          }
        }
      }
    }

    gpu = {
      # NVIDIA driver and container toolkit come with the AMI; the device plugin (kuberay.tf) advertises the GPUs.
      ami_type       = "AL2023_x86_64_NVIDIA"
      instance_types = var.gpu_instance_types
      capacity_type  = var.gpu_capacity_type
      min_size       = var.gpu_node_count.min
      max_size       = var.gpu_node_count.max
      desired_size   = var.gpu_node_count.desired

      labels = { "witforge.io/pool" = "gpu" }
      taints = {
        gpu = {
          key    = "nvidia.com/gpu"
          value  = "true"
          effect = "NO_SCHEDULE"
        }
      }

      block_device_mappings = {
        xvda = {
          device_name = "/dev/xvda"
          ebs = {
            volume_size           = var.gpu_disk_gb
            volume_type           = "gp3"
            encrypted             = true
            delete_on_termination = true
          }
        }
      }
    }
  }
}
