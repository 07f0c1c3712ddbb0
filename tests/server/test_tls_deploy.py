"""``deploy-local --tls``: certificates made with ``cryptography``, a TLS SuperLink with SuperNode authentication.

The default test makes the credentials, checks them (the server certificate chains to the CA and
names 127.0.0.1, localhost and ::1; node keys are OpenSSH ECDSA), starts a TLS SuperLink with
``--enable-supernode-auth``, registers one key, and shows that a SuperNode with an unregistered
key, and an ``--insecure`` SuperNode, are refused (exit 305). The ``slow`` test runs a whole
federation over TLS with registered nodes.
"""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_ssh_private_key, load_ssh_public_key

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from server.launch import CONNECTION, flower_env  # noqa: E402
from server.processes import Processes, alive, free_port  # noqa: E402
from server.tls import (  # noqa: E402
    REFUSED,
    deploy_local_tls,
    make_credentials,
    register_node,
    start_tls_superlink,
    start_tls_supernode,
    write_tls_connection,
)


def _exit_code(proc: subprocess.Popen, timeout: float) -> int | None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            return proc.returncode
        time.sleep(0.3)
    return None


def test_credentials_and_refused_nodes(tmp_path):
    creds = make_credentials(tmp_path, nodes=3)
    ca = x509.load_pem_x509_certificate(creds.ca_cert.read_bytes())
    srv = x509.load_pem_x509_certificate(creds.server_cert.read_bytes())
    srv.verify_directly_issued_by(ca)
    sans = srv.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(sans.get_values_for_type(x509.DNSName)) == {"localhost"}
    assert set(sans.get_values_for_type(x509.IPAddress)) == {ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")}
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    for i, key in enumerate(creds.node_keys):
        assert isinstance(load_ssh_private_key(key.read_bytes(), None), ec.EllipticCurvePrivateKey)
        assert isinstance(load_ssh_public_key(creds.public_key(i).read_bytes()), ec.EllipticCurvePublicKey)
        assert key.stat().st_mode & 0o077 == 0
    assert creds.server_key.stat().st_mode & 0o077 == 0

    home, logs = tmp_path / "flwr-home", tmp_path / "logs"
    env = flower_env(home)
    port = free_port()
    write_tls_connection(home, f"127.0.0.1:{port}", creds.ca_cert, CONNECTION)
    procs = Processes()
    try:
        start_tls_superlink(procs, port, creds, logs / "superlink.log", env, tmp_path)
        register_node(creds.public_key(0), CONNECTION, env, logs / "register.log")  # node 1's key is never registered
        taken = {port}
        start_tls_supernode(procs, 0, 3, port, creds, creds.node_keys[0], logs / "sn-0.log", env, tmp_path, taken)
        unregistered = start_tls_supernode(procs, 1, 3, port, creds, creds.node_keys[1], logs / "sn-1.log", env,
                                           tmp_path, taken)
        insecure = start_tls_supernode(procs, 2, 3, port, None, None, logs / "sn-2.log", env, tmp_path, taken)
        # The unregistered key is refused: Flower logs exit code 305, the process then ends with 1 (never 0).
        code = _exit_code(unregistered, 45)
        log1 = (logs / "sn-1.log").read_text()
        assert code not in (None, 0) and f"Exit Code: {REFUSED}" in log1, log1[-2000:]
        # The --insecure node cannot join: its plaintext connection attempts to the TLS port all fail.
        listed = subprocess.run(["flwr", "supernode", "list", CONNECTION, "--format", "json"], env=env,
                                capture_output=True, text=True, timeout=60)
        assert listed.returncode == 0, listed.stdout + listed.stderr
        nodes = json.loads(listed.stdout)["nodes"]
        assert len(nodes) == 1, nodes  # only the registered key
        log2 = (logs / "sn-2.log").read_text()
        assert insecure.poll() in (None, 1) and "Connection attempt failed" in log2, log2[-2000:]
    finally:
        procs.stop_all()
    assert not [p.pid for _, p in procs.procs if alive(p.pid)]


@pytest.mark.slow
@pytest.mark.integration
def test_tls_deployment_completes(tmp_path, tiny_run_config):
    """Over TLS with registered node keys, and with SecAgg+ (its four stages on the deployment runtime)."""
    out = tmp_path / "tls"
    cfg = tiny_run_config({"round-timeout": 600.0, "secagg": True})
    res = deploy_local_tls(cfg, out, nodes=2, timeout=1200)
    assert res.returncode == 0 and res.completed, res.logs["flwr-run"].read_text()[-3000:]
    rounds = json.loads((out / "rounds.json").read_text())
    assert [r["round"] for r in rounds] == [1, 2]
    assert all(r["replied"] == 2 and r["failed"] == 0 and r["eval_replied"] == 2 for r in rounds)
    assert all(len(r["secagg"]["masked_sha256"]) == 2 and r["global_updated"] for r in rounds)
    assert (out / "tls" / "ca.crt").is_file() and (out / "keys" / "node-1.pub").is_file()
    assert 'root-certificates = "' in (out / "flwr-home" / "config.toml").read_text()
    assert "insecure" not in (out / "flwr-home" / "config.toml").read_text()
    assert (out / "logs" / "register.log").read_text().count("registered successfully") == 2
