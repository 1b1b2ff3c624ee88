# kube-proxy's base in the offline node image: Debian with iptables and conntrack.
ARG BASE=localhost/debian:bookworm
FROM ${BASE}
RUN apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends iptables conntrack \
    && rm -rf /var/lib/apt/lists/* /usr/share/doc /usr/share/man
