#!/bin/bash
# kindnetd's job on the offline node image: once the node has a podCIDR, write a ptp CNI
# config for it (kubelet turns Ready), and keep a route to every other node's podCIDR
# through that node's address. Every 5 s, so nodes that join later are routed too.
set -u
kubeconfig=/etc/kubernetes/kubelet.conf
conf=/etc/cni/net.d/10-recserve.conflist
me=$(hostname)
until [ -s "$kubeconfig" ]; do sleep 1; done
while true; do
  kubectl --kubeconfig="$kubeconfig" get nodes -o \
    jsonpath='{range .items[*]}{.metadata.name}{" "}{.spec.podCIDR}{" "}{.status.addresses[?(@.type=="InternalIP")].address}{"\n"}{end}' 2>/dev/null |
    while read -r name cidr address; do
      [ -n "$cidr" ] && [ -n "$address" ] || continue
      if [ "$name" = "$me" ]; then
        want=$(printf '{"cniVersion":"0.4.0","name":"recserve","plugins":[{"type":"ptp","ipMasq":true,"mtu":1500,"ipam":{"type":"host-local","dataDir":"/run/cni-ipam-state","routes":[{"dst":"0.0.0.0/0"}],"ranges":[[{"subnet":"%s"}]]}},{"type":"portmap","capabilities":{"portMappings":true}}]}' "$cidr")
        if [ "$(cat "$conf" 2>/dev/null)" != "$want" ]; then
          mkdir -p "$(dirname "$conf")" && echo "$want" >"$conf.tmp" && mv "$conf.tmp" "$conf"
          echo "pod network: $cidr on $me"
        fi
      else
        ip route replace "$cidr" via "$address" 2>/dev/null || true
      fi
    done
  sleep 5
done
