"""ε of server-side DP runs (server/privacy.py) against known accountant values, and the ledger."""

from __future__ import annotations

import math
import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from lopa_fed.federation import FedSettings  # noqa: E402
from server.privacy import PrivacyLedger, effective_noise_multiplier, epsilon, summary_line  # noqa: E402


def test_epsilon_matches_the_published_opacus_value():
    # opacus/tests/accountants_test.py: sigma 1.5, q 0.04, 90 epochs (2250 steps), delta 1e-5 -> 7.32911117143
    eps, order = epsilon([(1.5, 0.04)] * 2250, 1e-5)
    assert eps == pytest.approx(7.32911117143, abs=1e-6)
    assert order > 1


def _exact_gaussian_delta(eps: float, sigma: float) -> float:
    """Exact delta(eps) of the Gaussian mechanism with sensitivity 1 (Balle & Wang 2018)."""
    phi = lambda x: 0.5 * math.erfc(-x / math.sqrt(2))  # noqa: E731
    return phi(1 / (2 * sigma) - eps * sigma) - math.exp(eps) * phi(-1 / (2 * sigma) - eps * sigma)


def test_full_participation_is_the_composed_gaussian_mechanism():
    # q = 1, T rounds of noise multiplier z = one Gaussian of z / sqrt(T): RDP bounds the exact epsilon from above
    z, rounds, delta = 2.0, 5, 1e-5
    eps, _ = epsilon([(z, 1.0)] * rounds, delta)
    assert _exact_gaussian_delta(eps, z / math.sqrt(rounds)) <= delta  # (eps, delta)-DP really holds
    assert _exact_gaussian_delta(0.75 * eps, z / math.sqrt(rounds)) > delta  # and the bound is not loose by 25 %
    more, _ = epsilon([(z, 1.0)] * (rounds + 1), delta)
    less, _ = epsilon([(z, 0.5)] * rounds, delta)
    assert more > eps > less  # more rounds cost more; sampling half the clients amplifies
    assert epsilon([], delta)[0] == 0.0


def test_effective_noise_multiplier():
    assert effective_noise_multiplier(1.0, 4, [10, 10, 10, 10]) == pytest.approx(1.0)
    assert effective_noise_multiplier(1.0, 4, [10, 10, 10]) == pytest.approx(0.75)  # one reply dropped
    assert effective_noise_multiplier(1.0, 2, [30, 10]) == pytest.approx(40 / 60)  # unequal weights


def test_ledger_rounds_resume_and_summary():
    s = FedSettings.of(dp_noise=2.0, dp_clip=0.5, dp_delta=1e-6)
    assert PrivacyLedger.start(FedSettings.of(), 4) is None  # no DP, no ledger
    led = PrivacyLedger.start(s, 4)
    r1 = led.account(4, 4, [10, 10, 10, 10], released=True)
    r2 = led.account(4, 4, [10, 10, 10, 10], released=True)
    r3 = led.account(4, 4, [], released=False)  # nothing published: no new cost
    assert r1["epsilon"] < r2["epsilon"] == r3["epsilon"] and r3["releases"] == 2
    assert r2["epsilon"] == pytest.approx(epsilon([(2.0, 1.0)] * 2, 1e-6)[0])
    assert r1["noise_std"] == pytest.approx(2.0 * 0.5 / 4) and r1["delta"] == 1e-6
    resumed = PrivacyLedger.start(s, 4, [{"round": 1, "dp": r1}, {"round": 2, "dp": r2}])
    assert resumed.account(4, 4, [10] * 4, True)["epsilon"] == pytest.approx(epsilon([(2.0, 1.0)] * 3, 1e-6)[0])
    assert "ε = " in summary_line(r2) and "δ = 1e-06" in summary_line(r2)
    median = PrivacyLedger.start(FedSettings.of(dp_noise=2.0, dp_clip=0.5, strategy="fedmedian"), 4)
    m = median.account(4, 4, [10] * 4, True)
    assert m["epsilon"] is None and "fedmedian" in m["note"] and "no epsilon" in summary_line(m)
    with pytest.raises(Exception, match="dp-delta"):
        FedSettings.of(dp_delta=0)


def test_run_summary_prints_epsilon():
    from rich.console import Console

    from server.cli import print_summary

    led = PrivacyLedger.start(FedSettings.of(dp_noise=2.0, dp_clip=0.5), 2)
    rec = {"round": 1, "train_loss": 0.7, "acc_mean": 0.5, "acc_min": 0.4, "acc_max": 0.6, "bytes_up": 1,
           "bytes_down": 2, "replied": 2, "failed": 0, "rejected": 0, "seconds": 1.0,
           "dp": led.account(2, 2, [5, 5], True)}
    console = Console(record=True, width=200)
    print_summary(console, [rec])
    text = console.export_text()
    assert f"ε = {rec['dp']['epsilon']:.3f} at δ = 1e-05" in text
