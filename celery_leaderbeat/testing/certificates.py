"""A throw-away certificate authority, with server and client certificates for 127.0.0.1."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass

__all__ = ["Certificates", "make_certificates"]


@dataclass(frozen=True)
class Certificates:
    """Paths of PEM files: the CA's certificate, the server's and a client's
    certificate and key."""

    ca: str
    cert: str
    key: str
    client_cert: str
    client_key: str


def make_certificates(directory: str) -> Certificates:
    """A self-signed CA, and a server and a client certificate it signed, valid two
    days for 127.0.0.1.

    The server certificate may also act as a client (etcd's JSON gateway
    reaches its own gRPC server with it, and with ``--client-cert-auth``
    that needs clientAuth). Needs the ``openssl`` command; elliptic-curve
    keys, so it takes milliseconds. ``directory`` is created if missing.
    """
    os.makedirs(directory, exist_ok=True)

    def path(name: str) -> str:
        return os.path.join(directory, name)

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)

    key = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    openssl("req", "-x509", *key, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
            "-subj", "/CN=leaderbeat test CA")
    for name, usage in (("server", "serverAuth,clientAuth"), ("client", "clientAuth")):
        with open(path(f"{name}.ext"), "w", encoding="ascii") as fh:
            fh.write(f"subjectAltName=IP:127.0.0.1\nextendedKeyUsage={usage}\n")
        openssl("req", *key, "-keyout", f"{name}.key", "-out", f"{name}.csr",
                "-subj", f"/CN=leaderbeat {name}")
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                "-CAcreateserial", "-out", f"{name}.pem", "-days", "2",
                "-extfile", f"{name}.ext")
    return Certificates(ca=path("ca.pem"), cert=path("server.pem"), key=path("server.key"),
                        client_cert=path("client.pem"), client_key=path("client.key"))
