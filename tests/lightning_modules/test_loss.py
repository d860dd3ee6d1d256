"""The contrastive loss against a brute-force reference, locally and across DDP ranks."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from maskstudy.lightning_modules.loss import contrastive_loss, info_nce_loss


def reference(u, a, tau, margin):
    """Eq. 6-8 written out with loops."""
    b = u.shape[0]
    total = 0.0
    for i in range(b):
        pos = float(u[i] @ a[i])
        z = math.exp(pos / tau)
        for j in range(b):
            if j == i:
                continue
            for s in (float(u[i] @ a[j]), float(u[i] @ u[j]), float(a[i] @ a[j])):
                if s <= pos + margin:
                    z += math.exp(s / tau)
        total += -(pos / tau - math.log(z))
    return total / b


def random_pairs(b=12, d=16, seed=0, aligned=0.0):
    g = torch.Generator().manual_seed(seed)
    u = F.normalize(torch.randn(b, d, generator=g), dim=-1)
    a = F.normalize(aligned * u + torch.randn(b, d, generator=g), dim=-1)
    return u, a


@pytest.mark.parametrize("tau,margin", [(0.02, 0.1), (0.07, 0.0), (0.5, 10.0)])
@pytest.mark.parametrize("aligned", [0.0, 1.5])
def test_matches_brute_force(tau, margin, aligned):
    u, a = random_pairs(aligned=aligned)
    out = info_nce_loss(u.double(), a.double(), temperature=tau, margin=margin)
    assert out.loss.item() == pytest.approx(reference(u.double(), a.double(), tau, margin), rel=1e-9)


def test_false_negative_filter_and_stats():
    u, a = random_pairs(b=8, aligned=0.0)
    strict = info_nce_loss(u, a, temperature=0.1, margin=-10.0)  # drops every negative
    assert strict.fn_masked_frac.item() == 1.0
    assert strict.loss.item() == pytest.approx(0.0, abs=1e-6)
    loose = info_nce_loss(u, a, temperature=0.1, margin=10.0)
    assert loose.fn_masked_frac.item() == 0.0
    assert loose.pos_sim.item() == pytest.approx(float((u * a).sum(-1).mean()), abs=1e-6)
    off = ~torch.eye(8, dtype=torch.bool)
    assert loose.neg_sim.item() == pytest.approx(float((u @ a.T)[off].mean()), abs=1e-6)


def test_rows_of_a_larger_batch_use_global_negatives():
    u, a = random_pairs(b=10, seed=3)
    full = info_nce_loss(u.double(), a.double(), temperature=0.05, margin=0.1)
    first = info_nce_loss(u[:5].double(), a[:5].double(), temperature=0.05, margin=0.1,
                          all_users=u.double(), all_answers=a.double(), offset=0)
    second = info_nce_loss(u[5:].double(), a[5:].double(), temperature=0.05, margin=0.1,
                           all_users=u.double(), all_answers=a.double(), offset=5)
    assert ((first.loss + second.loss) / 2).item() == pytest.approx(full.loss.item(), rel=1e-12)


def test_gradients_flow_to_both_towers():
    u, a = random_pairs()
    u.requires_grad_(True)
    a.requires_grad_(True)
    info_nce_loss(u, a).loss.backward()
    assert u.grad.abs().sum() > 0 and a.grad.abs().sum() > 0


def _ddp_worker(rank, world, init_file, u, a, results):
    import torch.distributed as dist
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    n = u.shape[0] // world
    lu = u[rank * n:(rank + 1) * n].clone().requires_grad_(True)
    la = a[rank * n:(rank + 1) * n].clone().requires_grad_(True)
    out = contrastive_loss(lu, la, temperature=0.05, margin=0.1)
    out.loss.backward()
    results[rank] = (out.loss.item(), lu.grad.clone(), la.grad.clone())
    dist.destroy_process_group()


def test_ddp_gathered_negatives_equal_the_joined_batch(tmp_path):
    import torch.multiprocessing as mp
    u, a = random_pairs(b=8, seed=5)
    u, a = u.double(), a.double()
    manager = mp.Manager()
    results = manager.dict()
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), u, a, results), nprocs=2, join=True)
    uj, aj = u.clone().requires_grad_(True), a.clone().requires_grad_(True)
    joined = info_nce_loss(uj, aj, temperature=0.05, margin=0.1)
    joined.loss.backward()
    mean_loss = (results[0][0] + results[1][0]) / 2
    assert mean_loss == pytest.approx(joined.loss.item(), rel=1e-10)
    # DDP averages gradients over ranks: rank-summed local-loss gradients / world == joined
    grad_u = torch.cat([results[0][1], results[1][1]]) / 2
    torch.testing.assert_close(grad_u, uj.grad)
    torch.testing.assert_close(torch.cat([results[0][2], results[1][2]]) / 2, aj.grad)
