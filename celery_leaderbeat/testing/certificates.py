"""A throw-away certificate authority and a server certificate for 127.0.0.1."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass

__all__ = ["Certificates", "make_certificates"]


@dataclass(frozen=True)
class Certificates:
    """Paths of PEM files: the CA's certificate, the server's certificate and key."""

    ca: str
    cert: str
    key: str


def make_certificates(directory: str) -> Certificates:
    """A self-signed CA and a server certificate it signed, valid one day for 127.0.0.1.

    Needs the ``openssl`` command. Elliptic-curve keys, so it takes milliseconds.
    """
    def path(name: str) -> str:
        return os.path.join(directory, name)

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    curve = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    openssl("req", "-x509", *curve, "-days", "1", "-keyout", path("ca.key"),
            "-out", path("ca.pem"), "-subj", "/CN=leaderbeat test CA")
    openssl("req", *curve, "-keyout", path("server.key"), "-out", path("server.csr"),
            "-subj", "/CN=127.0.0.1")
    with open(path("server.ext"), "w", encoding="ascii") as fh:
        fh.write("subjectAltName=IP:127.0.0.1\n")
    openssl("x509", "-req", "-in", path("server.csr"), "-CA", path("ca.pem"),
            "-CAkey", path("ca.key"), "-CAcreateserial", "-days", "1",
            "-extfile", path("server.ext"), "-out", path("server.pem"))
    return Certificates(ca=path("ca.pem"), cert=path("server.pem"), key=path("server.key"))
