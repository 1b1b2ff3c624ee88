"""A real local Kubernetes control plane for tests and the demo (no containers needed).

etcd, kube-apiserver, kube-controller-manager and kube-scheduler built from their Go
modules (hack/tools.sh) run as local processes; kwok simulates nodes at scale; a small
node agent runs pods bound to its nodes as real processes; Debian's Prometheus scrapes
them. See :class:`recserve_dev.localcluster.cluster.LocalCluster`.
"""
