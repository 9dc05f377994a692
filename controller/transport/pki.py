"""Certificates for hosts that join over a real network, made with Open vSwitch's `ovs-pki`.

`ovs-pki init` makes two CAs: *controllerca* signs the controller's certificate and
*switchca* signs each host's. A host trusts only controllerca, the controller trusts
only switchca, so both ends of every connection (OpenFlow, OVSDB, the join API) prove
who they are. A host certificate's CN is the host name the operator invited; the
controller checks it against the registration, so a certificate alone does not let a
host take another host's place.

Layout of DIR (mode 0700):  ca/ (ovs-pki's CAs), ctl-privkey.pem, ctl-cert.pem.
"""
from __future__ import annotations

import os
import shutil
import ssl
import tempfile

from tep.ovs import run


class Pki:
    def __init__(self, dir: str):
        self.dir = os.path.abspath(dir)

    @property
    def ctl_key(self) -> str:
        return os.path.join(self.dir, "ctl-privkey.pem")

    @property
    def ctl_cert(self) -> str:
        return os.path.join(self.dir, "ctl-cert.pem")

    @property
    def switch_ca(self) -> str:
        """The CA the controller trusts: it signed every host certificate."""
        return os.path.join(self.dir, "ca", "switchca", "cacert.pem")

    @property
    def controller_ca(self) -> str:
        """The CA hosts trust: it signed the controller's certificate."""
        return os.path.join(self.dir, "ca", "controllerca", "cacert.pem")

    def exists(self) -> bool:
        return all(os.path.exists(p) for p in (self.ctl_key, self.ctl_cert, self.switch_ca,
                                                self.controller_ca))

    def _ovs_pki(self, *args: str, cwd: str) -> None:
        run(["ovs-pki", f"--dir={self.dir}/ca", f"--log={self.dir}/ovs-pki.log", *args], timeout=120,
            cwd=cwd)

    def ensure(self) -> "Pki":
        """Create both CAs and the controller's certificate, once."""
        if self.exists():
            return self
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        os.chmod(self.dir, 0o700)
        self._ovs_pki("--force", "init", cwd=self.dir)
        self._ovs_pki("--force", "req+sign", "ctl", "controller", cwd=self.dir)
        os.unlink(os.path.join(self.dir, "ctl-req.pem"))
        return self

    def sign_host(self, name: str) -> tuple[str, str]:
        """A new key and a certificate with CN=name signed by switchca: (key PEM, cert PEM)."""
        return self._sign(name, "switch")

    def for_member(self, dest: str, name: str) -> "Pki":
        """Another cluster member's PKI in `dest`, as an operator installs it on that
        machine: the same CAs (it signs the hosts it invites) and a certificate of its own
        (CN=name, signed by controllerca: its identity toward hosts and the other members)."""
        other = Pki(dest)
        if other.exists():
            return other
        os.makedirs(other.dir, mode=0o700, exist_ok=True)
        os.chmod(other.dir, 0o700)
        shutil.copytree(os.path.join(self.dir, "ca"), os.path.join(other.dir, "ca"), dirs_exist_ok=True)
        key, cert = other._sign(name, "controller")
        for path, text in ((other.ctl_key, key), (other.ctl_cert, cert)):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(text)
        return other

    def _sign(self, name: str, kind: str) -> tuple[str, str]:
        """A new key and a certificate with CN=name signed by the `kind` CA (switch or
        controller): (key PEM, cert PEM)."""
        with tempfile.TemporaryDirectory(dir=self.dir) as tmp:
            self._ovs_pki("--force", "req+sign", name, kind, cwd=tmp)
            with open(os.path.join(tmp, f"{name}-privkey.pem")) as k, \
                    open(os.path.join(tmp, f"{name}-cert.pem")) as c:
                return k.read(), c.read()

    def read(self, path: str) -> str:
        with open(path) as f:
            return f.read()


def peer_name(cert: dict | None) -> str | None:
    """The host name in a verified peer certificate (ovs-pki writes CN as 'NAME id:UUID')."""
    for rdn in (cert or {}).get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return value.split(" id:")[0]
    return None


def server_context(key: str, cert: str, ca: str) -> ssl.SSLContext:
    """TLS server that requires a client certificate signed by `ca`."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    ctx.load_verify_locations(ca)
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def client_context(key: str, cert: str, ca: str) -> ssl.SSLContext:
    """TLS client that presents `cert` and accepts only a server signed by `ca`. Names are
    not checked (ovs-pki certificates carry none); the private CA is the identity."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = False
    ctx.load_cert_chain(cert, key)
    ctx.load_verify_locations(ca)
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx
