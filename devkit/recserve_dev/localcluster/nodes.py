"""Node objects of the local cluster: kwok-simulated nodes and the agent's local nodes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

HARDWARE_LABEL = "recserve.io/hardware"
AGENT_LABEL = "recserve.io/node-agent"
KWOK_ANNOTATION = "kwok.x-k8s.io/node"
# Real workloads must not land on nodes that only pretend: simulated nodes carry this
# taint (kwok's convention) and only pods that tolerate it are placed there.
KWOK_TAINT = {"key": KWOK_ANNOTATION, "value": "fake", "effect": "NoSchedule"}

ACCELERATORS = {"gpu": "nvidia.com/gpu", "fpga": "xilinx.com/fpga"}


@dataclass(frozen=True)
class NodeShape:
    """Capacity of one node."""

    cpu: str
    memory: str
    accelerators: int
    pods: int = 110


SIMULATED_SHAPE = NodeShape(cpu="32", memory="128Gi", accelerators=8)
# The agent's nodes all share this machine's CPU; their capacity is nominal, sized so
# that a demo's few replicas fit (the requests are bookkeeping, not reservations).
AGENT_SHAPE = NodeShape(cpu="16", memory="32Gi", accelerators=4)


def node_manifest(name: str, hardware: str, shape: NodeShape, simulated: bool) -> dict[str, Any]:
    """A Node labelled and tainted like the HardwarePool examples and kind-config.yaml."""
    capacity: dict[str, str] = {"cpu": shape.cpu, "memory": shape.memory, "pods": str(shape.pods)}
    if hardware in ACCELERATORS:
        capacity[ACCELERATORS[hardware]] = str(shape.accelerators)
    taints: list[dict[str, str]] = []
    if hardware in ACCELERATORS:
        taints.append({"key": HARDWARE_LABEL, "value": hardware, "effect": "NoSchedule"})
    labels = {
        HARDWARE_LABEL: hardware,
        "kubernetes.io/hostname": name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
    }
    annotations = {"node.alpha.kubernetes.io/ttl": "0"}
    if simulated:
        labels["type"] = "kwok"
        annotations[KWOK_ANNOTATION] = "fake"
        taints.append(dict(KWOK_TAINT))
    else:
        labels[AGENT_LABEL] = "true"
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": labels, "annotations": annotations},
        "spec": {"taints": taints},
        "status": {
            "capacity": capacity,
            "allocatable": dict(capacity),
            "nodeInfo": {
                "architecture": "amd64",
                "operatingSystem": "linux",
                "kubeletVersion": "v1.34.4",
                "containerRuntimeVersion": "recserve-local://0.1",
                "kernelVersion": "",
                "osImage": "",
                "bootID": "",
                "machineID": "",
                "systemUUID": "",
                "kubeProxyVersion": "",
            },
            "phase": "Running",
        },
    }


def simulated_nodes(per_type: dict[str, int]) -> list[dict[str, Any]]:
    """kwok nodes: ``sim-<type>-<i>`` for each hardware type."""
    return [
        node_manifest(f"sim-{hw}-{i}", hw, SIMULATED_SHAPE, simulated=True)
        for hw, count in per_type.items()
        for i in range(count)
    ]


def agent_nodes(hardware_types: tuple[str, ...] = ("gpu", "fpga", "cpu")) -> list[dict[str, Any]]:
    """The agent's nodes: one ``local-<type>`` per hardware type, all on this CPU."""
    return [node_manifest(f"local-{hw}", hw, AGENT_SHAPE, simulated=False) for hw in hardware_types]
