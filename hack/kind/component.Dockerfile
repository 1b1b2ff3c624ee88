# A thin image over one Kubernetes component binary (static Go), tagged with the name
# kubeadm asks for: kube-apiserver, kube-controller-manager, kube-scheduler, kube-proxy,
# etcd, coredns, pause. kube-proxy needs iptables and conntrack: BASE=iptables.Dockerfile's.
# The context's c/COMPONENT/ holds the binary and an `entrypoint` link to it (coredns
# and pause run as the image's entrypoint; the others are named by kubeadm's manifests).
ARG BASE=scratch
FROM ${BASE}
ARG COMPONENT
COPY c/${COMPONENT}/ /usr/local/bin/
ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
ENTRYPOINT ["/usr/local/bin/entrypoint"]
