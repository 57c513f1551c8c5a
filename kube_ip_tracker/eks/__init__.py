"""EKS clusters discovered by name (``--aws-cluster-names REGION/NAME``): DescribeCluster with
botocore, EKS bearer tokens (presigned STS GetCallerIdentity), and the shared reconcile loop."""
