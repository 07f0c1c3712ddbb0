"""``lopa-fed deploy-local --tls``: TLS and SuperNode authentication, set up end to end on loopback.

:func:`make_credentials` makes, with the ``cryptography`` package, into ``OUT/tls`` and ``OUT/keys``:

* ``tls/ca.crt`` + ``tls/ca.key``: a self-signed CA (ECDSA P-384, 30 days);
* ``tls/server.pem`` + ``tls/server.key``: the SuperLink's certificate, signed by that CA, with
  SANs ``127.0.0.1``, ``localhost`` and ``::1``;
* ``keys/node-I`` + ``keys/node-I.pub``: one ECDSA P-384 key per SuperNode, OpenSSH format
  (what ``ssh-keygen -t ecdsa -b 384`` writes, and what ``flwr supernode register`` and
  ``flower-supernode --auth-supernode-private-key`` read).

:func:`deploy_local_tls` (``lopa-fed deploy-local --tls``) is :func:`server.launch.deploy_local`
with :func:`launch_claimed_tls` as the launch, under the run directory's lock: the SuperLink with ``--ssl-*`` and
``--enable-supernode-auth``; the connection in the private ``FLWR_HOME`` with
``root-certificates``; each node's public key registered with ``flwr supernode register``;
the SuperNodes with ``--root-certificates`` and ``--auth-supernode-private-key``; then
``flwr run`` to completion. Private keys are written with mode 0600.

An unregistered key, or an ``--insecure`` SuperNode against this SuperLink, is refused: the
SuperNode exits with code 305 (``SUPERNODE_CONNECTION_ERROR``).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from lopa_fed.federation import NUM_PARTITIONS, PARTITION_ID

from . import launch
from .metrics import read_rounds
from .processes import LaunchError, Processes, free_port

__all__ = [
    "Credentials", "deploy_local_tls", "make_credentials", "register_node", "start_tls_superlink",
    "start_tls_supernode",
]

#: Hosts the server certificate is valid for.
SERVER_HOSTS = ("127.0.0.1", "localhost", "::1")
#: Exit code of a SuperNode the SuperLink refuses (unregistered key, or no TLS).
REFUSED = 305


@dataclass(frozen=True)
class Credentials:
    """Paths of the files :func:`make_credentials` wrote."""

    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    node_keys: tuple[Path, ...]

    def public_key(self, i: int) -> Path:
        """OpenSSH public key of node ``i``."""
        return self.node_keys[i].with_name(self.node_keys[i].name + ".pub")


def _write(path: Path, data: bytes, private: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return path


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "lopa-fed"), x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(subject: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Name, signer: ec.EllipticCurvePrivateKey,
          days: int, ca: bool, hosts: tuple[str, ...] = ()) -> x509.Certificate:
    now = dt.datetime.now(dt.timezone.utc)
    b = (
        x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(issuer).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None), critical=True)
    )
    if ca:
        b = b.add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True)
    else:
        sans: list[x509.GeneralName] = []
        for h in hosts:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(h)))
            except ValueError:
                sans.append(x509.DNSName(h))
        b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        b = b.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    return b.sign(signer, hashes.SHA384())


def make_credentials(root: Path, nodes: int, hosts: tuple[str, ...] = SERVER_HOSTS, days: int = 30) -> Credentials:
    """Write a CA, a server certificate for ``hosts`` and ``nodes`` OpenSSH node keys under ``root``.

    Parameters
    ----------
    root : Path
        The run directory; files go to ``root/tls`` and ``root/keys``.
    nodes : int
        Number of SuperNode keys (``keys/node-0`` ... ``node-{nodes-1}``).
    hosts : tuple of str
        SANs of the server certificate (IP addresses or DNS names).
    days : int
        Validity of the certificates.
    """
    root = Path(root)
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca = _cert("lopa-fed CA", ca_key, _name("lopa-fed CA"), ca_key, days, ca=True)
    srv_key = ec.generate_private_key(ec.SECP384R1())
    srv = _cert(hosts[0], srv_key, ca.subject, ca_key, days, ca=False, hosts=hosts)
    pem = serialization.Encoding.PEM
    tls = root / "tls"
    paths = [
        _write(tls / "ca.crt", ca.public_bytes(pem)), _write(tls / "ca.key", _pem_key(ca_key), private=True),
        _write(tls / "server.pem", srv.public_bytes(pem)), _write(tls / "server.key", _pem_key(srv_key), private=True),
    ]
    keys = []
    for i in range(int(nodes)):
        key = ec.generate_private_key(ec.SECP384R1())
        path = _write(root / "keys" / f"node-{i}", key.private_bytes(
            pem, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()), private=True)
        pub = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        _write(path.with_name(path.name + ".pub"), pub + f" lopa-fed-node-{i}\n".encode())
        keys.append(path)
    return Credentials(paths[0], paths[1], paths[2], paths[3], tuple(keys))


def write_tls_connection(flwr_home: Path, address: str, ca_cert: Path, name: str) -> Path:
    """``$FLWR_HOME/config.toml`` with one TLS connection ``name`` (``root-certificates``, no ``insecure``)."""
    flwr_home.mkdir(parents=True, exist_ok=True)
    path = flwr_home / "config.toml"
    path.write_text(
        f'[superlink]\ndefault = "{name}"\n\n[superlink.{name}]\naddress = "{address}"\n'
        f'root-certificates = "{Path(ca_cert).resolve()}"\n'
    )
    return path


def wait_https(port: int, proc: subprocess.Popen, ca_cert: Path, timeout: float = 60.0, log_path: Path | None = None) -> None:
    """Wait until ``https://127.0.0.1:port/health`` answers with a certificate the CA vouches for."""
    import httpx

    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            tail = log_path.read_text()[-2000:] if log_path and log_path.is_file() else ""
            raise LaunchError(f"flower-superlink exited with code {proc.returncode} while starting (log: {log_path}):\n{tail}")
        try:
            if httpx.get(f"https://127.0.0.1:{port}/health", timeout=1.0, verify=str(ca_cert)).is_success:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise LaunchError(f"nothing answered on https://127.0.0.1:{port} within {timeout:.0f}s (log: {log_path})")


def start_tls_superlink(procs: Processes, port: int, creds: Credentials, log_path: Path, env: Mapping[str, str],
                        cwd: Path) -> subprocess.Popen:
    """``flower-superlink`` with TLS and SuperNode authentication on 127.0.0.1:``port``; waits until it answers."""
    proc = procs.start("superlink", [
        "flower-superlink", "--ssl-ca-certfile", str(creds.ca_cert), "--ssl-certfile", str(creds.server_cert),
        "--ssl-keyfile", str(creds.server_key), "--enable-supernode-auth", "--isolation", "subprocess",
        "--host", "127.0.0.1", "--port", str(port), "--disable-runtime-dependency-installation",
    ], log_path, env, cwd=cwd)
    wait_https(port, proc, creds.ca_cert, log_path=log_path)
    return proc


def register_node(public_key: Path, connection: str, env: Mapping[str, str], log_path: Path) -> None:
    """``flwr supernode register KEY.pub CONNECTION``; LaunchError (naming the log) if it is not registered."""
    res = subprocess.run(["flwr", "supernode", "register", str(public_key), connection], env=dict(env),
                         capture_output=True, text=True, timeout=120)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a", encoding="utf-8") as f:
        f.write(f"$ flwr supernode register {public_key} {connection}\n{res.stdout}{res.stderr}\n")
    if res.returncode != 0 or "registered successfully" not in res.stdout + res.stderr:
        raise LaunchError(f"flwr supernode register {public_key.name} failed (exit {res.returncode}; log: {log_path})")


def start_tls_supernode(procs: Processes, i: int, nodes: int, port: int, creds: Credentials | None, key: Path | None,
                        log_path: Path, env: Mapping[str, str], cwd: Path, taken: set[int]) -> subprocess.Popen:
    """SuperNode ``i`` of ``nodes`` against the TLS SuperLink on ``port``.

    ``creds`` gives ``--root-certificates`` and ``key`` ``--auth-supernode-private-key``;
    ``creds=None`` starts an ``--insecure`` node instead (which the SuperLink refuses).
    """
    node_port = free_port()
    while node_port in taken:
        node_port = free_port()
    taken.add(node_port)
    security = ["--insecure"] if creds is None else ["--root-certificates", str(creds.ca_cert)]
    if key is not None:
        security += ["--auth-supernode-private-key", str(key)]
    return procs.start(f"supernode-{i}", [
        "flower-supernode", *security, "--superlink", f"127.0.0.1:{port}", "--host", "127.0.0.1",
        "--port", str(node_port), "--node-config", f"{PARTITION_ID}={i} {NUM_PARTITIONS}={nodes}",
    ], log_path, env, cwd=cwd)


def launch_claimed_tls(
    run_config: Mapping[str, Any], out_dir: Path, app_dir: Path, superlink_flags: list[str], timeout: float,
    on_round: Callable[[dict[str, Any], Processes], None] | None, fed_cfg: str | None, nodes: int,
) -> Any:
    """:func:`server.launch._launch_claimed` with TLS, node keys and registration (same signature and result)."""
    home = out_dir / "flwr-home"
    env = launch.flower_env(home)
    port = free_port()
    creds = make_credentials(out_dir, nodes)
    write_tls_connection(home, f"127.0.0.1:{port}", creds.ca_cert, launch.CONNECTION)
    logs = {"superlink": out_dir / "logs" / "superlink.log", "flwr-run": out_dir / "logs" / "flwr-run.log",
            "register": out_dir / "logs" / "register.log"}
    procs, t0, rc = Processes(), time.time(), -1
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, launch._raise_terminated) if main else None
    try:
        start_tls_superlink(procs, port, creds, logs["superlink"], env, out_dir)
        taken = {port}
        for i in range(nodes):
            register_node(creds.public_key(i), launch.CONNECTION, env, logs["register"])
            logs[f"supernode-{i}"] = out_dir / "logs" / f"supernode-{i}.log"
            start_tls_supernode(procs, i, nodes, port, creds, creds.node_keys[i], logs[f"supernode-{i}"], env,
                                out_dir, taken)
        cfg_file = launch.write_run_config(out_dir / "run-config.toml", launch.complete_run_config(run_config, out_dir))
        rc = launch._flwr_run(procs, app_dir, cfg_file, env, logs["flwr-run"], out_dir,
                              int(run_config.get("num-server-rounds", 0)), fed_cfg, timeout, on_round)
    finally:
        notes = procs.stop_all()
        if main:
            signal.signal(signal.SIGTERM, previous)
    return launch.LaunchResult(rc, time.time() - t0, out_dir, read_rounds(out_dir), logs, notes)


def deploy_local_tls(
    run_config: Mapping[str, Any],
    out_dir: Path,
    *,
    nodes: int,
    app_dir: Path | None = None,
    timeout: float = 3600.0,
    on_round: Callable[[dict[str, Any], Processes], None] | None = None,
    force: bool = False,
) -> Any:
    """:func:`server.launch.deploy_local` over TLS with SuperNode authentication (same arguments and result).

    Raises
    ------
    ConfigError, OutputExistsError, CheckpointError, DataError, RunBusyError
        As :func:`server.launch.deploy_local`, before anything starts.
    LaunchError
        The SuperLink did not come up, or a node key could not be registered (the message names the log).
    """
    launch.check_launch(nodes, timeout)
    return launch._launch(run_config, out_dir, app_dir, [], timeout, on_round, nodes=nodes, force=force,
                          claimed=launch_claimed_tls)
