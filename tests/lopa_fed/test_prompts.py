"""Prompt generators: shapes, parameter counts, initialisation, variants and roles."""

from __future__ import annotations

import pytest
import torch

from lopa_fed.config import PROMPT_METHODS, ConfigError, LoPAConfig, TrainConfig
from lopa_fed.prompts import GENERATORS, PRIVATE, SHARED, build_generator, expected_num_parameters

H, D = 24, 40


def paper_lopa_count(m, d, r, h, hh):
    """LOPA.md: m·d + 2(h·h′ + h′) + (h′·m·r + m·r) + (h′·d·r + d·r)."""
    return m * d + 2 * (h * hh + hh) + (hh * m * r + m * r) + (hh * d * r + d * r)


@pytest.mark.parametrize("method", PROMPT_METHODS)
def test_shapes_every_method(method):
    cfg = LoPAConfig(method=method, m=5, r=2, hidden=16)
    g = build_generator(cfg, H, D).eval()
    for b in (1, 3):
        z = g(torch.randn(b, H))
        t = 10 if method == "lopa-concat" else 5
        assert z.shape == (b, t, D)
        assert g.num_tokens == t
        assert torch.isfinite(z).all()


@pytest.mark.parametrize("method", PROMPT_METHODS)
def test_parameter_counts_match_formulas(method):
    cfg = LoPAConfig(method=method, m=7, r=3, hidden=16)
    g = build_generator(cfg, H, D)
    m, r, hh = 7, 3, 16
    independent = {
        "pt": m * D,
        "idpg": H * hh + hh + hh * m * D + m * D,
        "lopa": paper_lopa_count(m, D, r, H, hh),
        "lopa-add": paper_lopa_count(m, D, r, H, hh),
        "lopa-max": paper_lopa_count(m, D, r, H, hh),
        "lopa-concat": paper_lopa_count(m, D, r, H, hh),
        "lopa-instance": paper_lopa_count(m, D, r, H, hh) - m * D,
    }[method]
    assert g.num_parameters() == independent == expected_num_parameters(cfg, H, D)


@pytest.mark.parametrize("r,expected_m", [(1, 0.80), (2, 1.07), (4, 1.60)])
def test_paper_glue_counts(r, expected_m):
    """h = d = 1024, h′ = 256, m = 10 gives 0.80M / 1.07M / 1.60M (LOPA.md)."""
    n = expected_num_parameters(LoPAConfig(r=r), 1024, 1024)
    assert round(n / 1e6, 2) == expected_m
    assert round(expected_num_parameters(LoPAConfig(method="idpg"), 1024, 1024) / 1e6, 2) == 2.89


def test_gate_at_init_is_half_zs():
    torch.manual_seed(0)
    g = build_generator(LoPAConfig(m=10, r=4, hidden=32), H, D).eval()
    e = torch.nn.functional.normalize(torch.randn(8, H), dim=-1)
    z = g(e)
    ratio = z / g.zs.unsqueeze(0)
    assert torch.allclose(ratio, torch.full_like(ratio, 0.5), atol=1e-3)
    # Zs is drawn from N(0, 1) as the authors do
    assert 0.8 < g.zs.std().item() < 1.2


def test_head_initialisation():
    g = build_generator(LoPAConfig(hidden=256), 384, 384)
    for name, p in g.named_parameters():
        if name.endswith("bias"):
            assert torch.count_nonzero(p) == 0, name
        elif "head" in name:
            assert abs(p.std().item() - 0.02) < 0.002, name


def _independent_instance_part(g, e):
    """Z_I = u vᵀ recomputed by hand from the head weights (eval mode, no dropout)."""
    def mlp(seq, x):
        return torch.tanh(x @ seq[1].weight.T + seq[1].bias) @ seq[3].weight.T + seq[3].bias

    m, r = g.config.m, g.config.r
    u = mlp(g.u_head, e).reshape(-1, m, r)
    v = mlp(g.v_head, e).reshape(-1, D, r)
    return torch.einsum("bmr,bdr->bmd", u, v)


@pytest.mark.parametrize("method", ["lopa", "lopa-add", "lopa-max", "lopa-concat", "lopa-instance"])
def test_variants_compute_their_formula(method):
    torch.manual_seed(1)
    g = build_generator(LoPAConfig(method=method, m=4, r=2, hidden=16), H, D).eval()
    with torch.no_grad():  # make Z_I large enough that the variants differ visibly
        for p in g.parameters():
            p.mul_(20.0) if p.dim() > 1 else None
    e = torch.randn(3, H)
    zi = _independent_instance_part(g, e)
    zs = g.zs.unsqueeze(0).expand(3, -1, -1) if method != "lopa-instance" else None
    expected = {
        "lopa": lambda: zs * torch.sigmoid(zi),
        "lopa-add": lambda: zs + zi,
        "lopa-max": lambda: torch.where(zs > zi, zs, zi),
        "lopa-concat": lambda: torch.cat([zs, zi], dim=1),
        "lopa-instance": lambda: 1 / (1 + torch.exp(-zi)),
    }[method]()
    torch.testing.assert_close(g(e), expected, rtol=1e-5, atol=1e-5)


def test_pt_ignores_input_and_idpg_depends_on_it():
    pt = build_generator(LoPAConfig(method="pt", m=3), H, D)
    z = pt(torch.zeros(2, 0))
    assert torch.equal(z[0], pt.zs) and torch.equal(z[1], pt.zs)
    idpg = build_generator(LoPAConfig(method="idpg", m=3, hidden=8), H, D).eval()
    a, b = idpg(torch.randn(2, H))
    assert not torch.allclose(a, b)


@pytest.mark.parametrize("method", PROMPT_METHODS)
def test_roles_disjoint_and_cover_everything(method):
    g = build_generator(LoPAConfig(method=method, m=3, r=2, hidden=8), H, D)
    roles = g.roles()
    names = {n for n, p in g.named_parameters() if p.requires_grad}
    assert set(roles) == names
    shared = {n for n, r in roles.items() if r == SHARED}
    private = {n for n, r in roles.items() if r == PRIVATE}
    assert shared.isdisjoint(private) and shared | private == names
    if method in ("lopa", "lopa-add", "lopa-max", "lopa-concat"):
        assert shared == {"zs"} and all("head" in n for n in private)
    if method == "lopa-instance":
        assert shared == set()
    if method in ("pt", "idpg"):
        assert private == set()


def test_registry_and_config_errors():
    assert set(GENERATORS) == set(PROMPT_METHODS)
    with pytest.raises(ConfigError, match="unknown method"):
        LoPAConfig(method="prefix")
    with pytest.raises(ConfigError, match="m must be"):
        LoPAConfig(m=0)
    with pytest.raises(ConfigError, match="unknown field"):
        LoPAConfig.from_dict({"method": "lopa", "rank": 3})
    with pytest.raises(ConfigError, match="lr"):
        TrainConfig(lr=-1)
    cfg = LoPAConfig(method="lopa-max", m=3, r=1)
    assert LoPAConfig.from_dict(cfg.to_dict()) == cfg
    assert TrainConfig().learning_rate("lopa") == 1e-5 and TrainConfig().learning_rate("pt") == 1e-4
    assert TrainConfig().learning_rate("lopa-add") == 1e-5
