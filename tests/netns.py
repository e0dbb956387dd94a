"""Two network namespaces joined by a veth pair, playing the Windows host and the WSL guest.

Private addresses chosen by the test (10.231.N.0/24); traffic never leaves the pair. Everything
is deleted on exit, also when the test fails.
"""
import os
import shutil
import subprocess
import uuid

import pytest


class IpCommandFailed(RuntimeError):
    """An `ip` command failed; the message carries its stderr."""


def _ip(*args, check=True):
    r = subprocess.run(["ip", *args], capture_output=True, text=True)
    if check and r.returncode != 0:
        raise IpCommandFailed(f"'ip {' '.join(args)}' failed (exit {r.returncode}): {r.stderr.strip()}")
    return r


def can_make_namespaces() -> str:
    """'' when namespaces can be made here, else the reason they cannot."""
    if shutil.which("ip") is None:
        return "the 'ip' command (iproute2) is not installed"
    if os.geteuid() != 0:
        return "creating network namespaces needs root"
    name = "relayprobe" + uuid.uuid4().hex[:6]
    r = _ip("netns", "add", name, check=False)
    if r.returncode != 0:
        return f"'ip netns add' failed: {r.stderr.strip()}"
    try:
        # entering needs a mount namespace of its own (fails e.g. in a chroot whose / is no mount point)
        r = _ip("netns", "exec", name, "true", check=False)
        if r.returncode != 0:
            return f"'ip netns exec' failed: {r.stderr.strip()}"
    finally:
        _ip("netns", "del", name, check=False)
    return ""


def skip_without_namespaces():
    reason = can_make_namespaces()
    if reason:
        pytest.skip(f"cannot build test network namespaces: {reason}")


class HostAndGuest:
    """ns `win` holds `win_ip`, ns `wsl` holds `wsl_ip`; the guest's default route goes via the host,
    as in WSL's NAT mode."""

    def __init__(self, subnet_octet: int = None, guest_resolv_conf: str = "nameserver 10.255.255.254\n"):
        tag = uuid.uuid4().hex[:6]
        n = subnet_octet if subnet_octet is not None else 1 + int(tag, 16) % 250
        self.win, self.wsl = f"relwin{tag}", f"relwsl{tag}"
        self.win_if, self.wsl_if = f"vw{tag}", f"vl{tag}"
        self.win_ip, self.wsl_ip = f"10.231.{n}.1", f"10.231.{n}.2"
        self.subnet = f"10.231.{n}.0/24"
        # `ip netns exec` mounts /etc/netns/NAME/resolv.conf over /etc/resolv.conf: the guest sees
        # WSL's DNS-tunneling stub, as a real WSL2 guest does, never this machine's resolver
        self.guest_resolv_conf = guest_resolv_conf

    def __enter__(self):
        try:
            _ip("netns", "add", self.win)
            _ip("netns", "add", self.wsl)
            _ip("link", "add", self.win_if, "type", "veth", "peer", "name", self.wsl_if)
            _ip("link", "set", self.win_if, "netns", self.win)
            _ip("link", "set", self.wsl_if, "netns", self.wsl)
            for ns, ifname, addr in ((self.win, self.win_if, self.win_ip), (self.wsl, self.wsl_if, self.wsl_ip)):
                _ip("-n", ns, "addr", "add", f"{addr}/24", "dev", ifname)
                _ip("-n", ns, "link", "set", ifname, "up")
                _ip("-n", ns, "link", "set", "lo", "up")
            _ip("-n", self.wsl, "route", "add", "default", "via", self.win_ip)
            os.makedirs(f"/etc/netns/{self.wsl}", exist_ok=True)
            with open(f"/etc/netns/{self.wsl}/resolv.conf", "w") as f:
                f.write(self.guest_resolv_conf)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc):
        for ns in (self.win, self.wsl):
            _ip("netns", "del", ns, check=False)   # deleting a namespace removes its veth end
        shutil.rmtree(f"/etc/netns/{self.wsl}", ignore_errors=True)

    def popen(self, ns: str, argv, **kw) -> subprocess.Popen:
        return subprocess.Popen(["ip", "netns", "exec", ns, *argv], **kw)

    def run(self, ns: str, argv, **kw) -> subprocess.CompletedProcess:
        return subprocess.run(["ip", "netns", "exec", ns, *argv], **kw)

    def vanish_guest(self) -> None:
        """The guest disappears without FIN or RST: its end of the link goes down."""
        _ip("-n", self.wsl, "link", "set", self.wsl_if, "down")
