"""SecAgg+ settings and arithmetic, without Flower runs: refusals, scaling into the clipping range, the error bound."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from clients.secagg import SECAGG_RANGE, scale_for_secagg  # noqa: E402
from lopa_fed.errors import ConfigError  # noqa: E402
from lopa_fed.federation import FedSettings  # noqa: E402
from server.secagg import QUANTIZATION, error_bound  # noqa: E402


def test_secagg_settings_and_refusals():
    s = FedSettings.of(secagg=True)
    assert s.server.secagg and s.server.secagg_clip == 8.0 and FedSettings.from_run_config(s.to_run_config()) == s
    for bad, match in (
        (dict(federate="all"), "only with federate = zs"),
        (dict(federate="zs+heads"), "only with federate = zs"),
        (dict(strategy="fedmedian"), "fedavg"),
        (dict(dp_clip=1.0), "server-side DP"),
        (dict(secagg_clip=0.0), "secagg-clip"),
        (dict(secagg_threshold=1.5), "secagg-threshold"),
        (dict(min_nodes=1), "min-nodes >= 2"),
    ):
        with pytest.raises(ConfigError, match=match):
            FedSettings.of(secagg=True, **bad)
    FedSettings.of(federate="all", strategy="fedmedian")  # without secagg all of this is fine


def test_scale_into_range_and_error_bound():
    z = {"prompt.zs": np.array([[0.5, -3.0], [12.0, -20.0]], np.float32), "head.bias": np.array([1.0], np.float32)}
    scaled, clipped = scale_for_secagg(z, clip=10.0)
    assert clipped == 2 and all(np.max(np.abs(a)) <= SECAGG_RANGE for a in scaled)
    np.testing.assert_allclose(scaled[0], [[0.4, -2.4], [8.0, -8.0]])
    assert scaled[0].dtype == np.float64
    # equal weights r = 1: 3·n·C/(Q·n) plus float32 rounding
    assert error_bound([50.0, 50.0], 50.0, 8.0) == pytest.approx(3 * 8.0 / QUANTIZATION + 8.0 * 2.0**-23)
    assert error_bound([10.0, 10.0], 100.0, 8.0) > 5 * error_bound([10.0, 10.0], 10.0, 8.0)  # small weights cost
    assert error_bound([], 10.0, 8.0) == float("inf")


def test_cli_refuses_secagg_without_zs_in_one_line(tmp_path):
    res = subprocess.run(
        [sys.executable, "-m", "lopa_fed.cli", "simulate", "--secagg", "--federate", "all", "--out", str(tmp_path / "x")],
        capture_output=True, text=True, timeout=120,
    )
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "secagg = true works only with federate = zs" in lines[0]
    assert not (tmp_path / "x").exists()
