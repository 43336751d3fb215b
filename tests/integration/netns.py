"""Network namespaces for partition tests: one per node, veth pairs on a bridge in the
root namespace (where the test's clients run), links cut with nftables inside a node's
namespace. Everything made is removed by `close()`."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid


def unavailable() -> str | None:
    """Why namespaces cannot be used here (None: they can)."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed (iproute2 / nftables)"
    probe = f"stp-{uuid.uuid4().hex[:6]}"
    r = subprocess.run(["ip", "netns", "add", probe], capture_output=True)
    if r.returncode != 0:
        return f"cannot create a network namespace: {r.stderr.decode().strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def _run(*cmd: str, input: str | None = None) -> None:
    subprocess.run(cmd, check=True, capture_output=True, input=input, text=True)


class Network:
    def __init__(self, names: list[str]) -> None:
        tag = uuid.uuid4().hex[:5]
        self.subnet = f"10.{int(tag[:2], 16) % 200 + 20}.{int(tag[2:4], 16)}"
        self.bridge = f"stb{tag}"
        self.ns: dict[str, str] = {}
        self.ip: dict[str, str] = {}
        self._links: list[str] = []
        try:
            _run("ip", "link", "add", self.bridge, "type", "bridge")
            _run("ip", "addr", "add", f"{self.subnet}.254/24", "dev", self.bridge)
            _run("ip", "link", "set", self.bridge, "up")
            for n, name in enumerate(names, 1):
                ns, outer, inner = f"st-{tag}-{name}", f"st{tag}{n}o", f"st{tag}{n}i"
                _run("ip", "netns", "add", ns)
                self.ns[name] = ns
                _run("ip", "link", "add", outer, "type", "veth", "peer", "name", inner)
                self._links.append(outer)
                _run("ip", "link", "set", inner, "netns", ns)
                _run("ip", "link", "set", outer, "master", self.bridge)
                _run("ip", "link", "set", outer, "up")
                ip = f"{self.subnet}.{n}"
                self.ip[name] = ip
                _run("ip", "netns", "exec", ns, "ip", "addr", "add", f"{ip}/24", "dev", inner)
                _run("ip", "netns", "exec", ns, "ip", "link", "set", inner, "up")
                _run("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
        except BaseException:
            self.close()
            raise

    def cut(self, name: str, others: list[str]) -> None:
        """Drop all traffic between `name` and `others` (clients on the bridge still reach it)."""
        peers = ", ".join(self.ip[o] for o in others)
        rules = (f"table inet strata_cut {{\n"
                 f"  chain input {{ type filter hook input priority 0; ip saddr {{ {peers} }} drop; }}\n"
                 f"  chain output {{ type filter hook output priority 0; ip daddr {{ {peers} }} drop; }}\n"
                 f"}}\n")
        _run("ip", "netns", "exec", self.ns[name], "nft", "-f", "-", input=rules)

    def heal(self, name: str) -> None:
        _run("ip", "netns", "exec", self.ns[name], "nft", "delete", "table", "inet", "strata_cut")

    def close(self) -> None:
        for ns in self.ns.values():
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        for link in self._links:
            subprocess.run(["ip", "link", "del", link], capture_output=True)
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)


class PortBlock:
    """Drop TCP packets to some loopback ports in this namespace (nftables): the
    processes listening there stop receiving, while their kernel's socket buffers
    cannot carry anything sent meanwhile (as SIGSTOP would let them)."""

    def __init__(self, ports: list[int]) -> None:
        self.table = f"strata_block_{uuid.uuid4().hex[:6]}"
        ports_s = ", ".join(str(p) for p in ports)
        _run("nft", "-f", "-", input=(
            f"table inet {self.table} {{\n"
            f"  chain output {{ type filter hook output priority 0; "
            f"tcp dport {{ {ports_s} }} drop; }}\n}}\n"))

    def close(self) -> None:
        subprocess.run(["nft", "delete", "table", "inet", self.table], capture_output=True)
