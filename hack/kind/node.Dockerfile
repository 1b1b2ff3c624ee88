# The offline kind node image: the base (base.Dockerfile), Kubernetes' node binaries built
# here (hack/tools.sh --with-kind), the control-plane images in one archive that
# containerd imports at boot, and a pod network in place of kindnetd (pod-network.sh).
# Context: a folder hack/kind-node-image.sh assembles.
ARG BASE=localhost/recserve/kind-base:bookworm
FROM ${BASE}
ARG K8S_VERSION
COPY --chmod=0755 bin/kubelet bin/kubeadm bin/kubectl /usr/bin/
COPY --chmod=0755 pod-network.sh /kind/bin/recserve-pod-network.sh
COPY --chmod=0644 recserve-pod-network.service recserve-images.service /etc/systemd/system/
COPY --chmod=0644 default-cni.yaml /kind/manifests/default-cni.yaml
COPY images.tar /kind/images/images.tar
# restrict_oom_score_adj: without it every pod sandbox fails on these hosts ("can't get
# final child's PID from pipe: EOF"): root there may not lower OOM scores.
RUN echo "${K8S_VERSION}" > /kind/version \
    && sed -i 's/restrict_oom_score_adj = false/restrict_oom_score_adj = true/' /etc/containerd/config.toml \
    && systemctl enable recserve-pod-network.service recserve-images.service
