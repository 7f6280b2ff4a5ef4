"""The shared maths defined once: graphs.SparseMat (the one sparse type) and losses.info_nce."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from mmrec_egra.graphs import SparseMat, propagate


def _random(n=20, m=15, seed=1) -> sp.csr_matrix:
    return sp.random(n, m, density=0.3, random_state=np.random.default_rng(seed), format="csr", dtype=np.float32)


def test_fixed_product_and_gradient_match_dense():
    A = _random()
    S = SparseMat.of(A)
    x = torch.randn(15, 4, requires_grad=True)
    xd = x.detach().clone().requires_grad_()
    (S @ x).pow(2).sum().backward()
    (torch.tensor(A.toarray()) @ xd).pow(2).sum().backward()
    assert torch.allclose(x.grad, xd.grad, atol=1e-5)
    assert np.allclose(S.to_scipy().toarray(), A.toarray())
    assert not S.values.requires_grad and S._fixed is not None        # constant: the CSR pair is cached
    with torch.no_grad():
        assert torch.allclose(S @ x, torch.tensor(A.toarray()) @ x, atol=1e-5)


def test_of_accepts_every_sparse_form_and_does_not_copy_itself():
    A = _random()
    dense = A.toarray()
    S = SparseMat.of(A)
    assert SparseMat.of(S) is S and SparseMat.of(S, "cpu") is S
    for form in (torch.tensor(dense).to_sparse(), torch.tensor(dense).to_sparse_csr(), S.to_torch()):
        assert np.array_equal(SparseMat.of(form).to_dense().numpy(), dense)
    dup = sp.coo_matrix((np.array([1.0, 2.0], np.float32), (np.array([0, 0]), np.array([1, 1]))), shape=(2, 2))
    assert SparseMat.of(dup).to_dense()[0, 1] == 3.0                     # duplicates summed


def test_symmetric_flag_uses_a_as_its_transpose():
    A = _random(12, 12)
    sym = sp.csr_matrix(A + A.T)
    x = torch.randn(12, 3, requires_grad=True)
    g = []
    for flag in (False, True):
        xx = x.detach().clone().requires_grad_()
        (SparseMat.of(sym, symmetric=flag) @ xx).sin().sum().backward()
        g.append(xx.grad)
    assert torch.allclose(g[0], g[1], atol=1e-6)
    S = SparseMat.of(sym, symmetric=True)
    a, a_t = S._fixed_csr()
    assert a_t is a                                                     # no transpose built


def test_learned_values_receive_gradients():
    A = _random(10, 8)
    S = SparseMat.of(A)
    w = S.values.clone().requires_grad_()
    x = torch.randn(8, 5, requires_grad=True)
    out = S.with_values(w) @ x
    out.pow(2).sum().backward()
    dense = torch.zeros(10, 8)
    dense[S.rows, S.cols] = w.detach()
    dense.requires_grad_()
    xd = x.detach().clone().requires_grad_()
    (dense @ xd).pow(2).sum().backward()
    assert torch.allclose(x.grad, xd.grad, atol=1e-5)
    assert torch.allclose(w.grad, dense.grad[S.rows, S.cols], atol=1e-5)


def test_propagate_needs_the_sparse_type():
    A = sp.identity(4, dtype=np.float32, format="csr")
    x = torch.ones(4, 2)
    assert torch.equal(propagate(SparseMat.of(A), x, 2), x)             # mean of x, Ax, A^2x = x
    with pytest.raises(TypeError, match="SparseMat.of"):
        propagate(torch.eye(4).to_sparse(), x, 1)


def test_info_nce_against_all_candidates_matches_hand_computation():
    from mmrec_egra.losses import info_nce
    torch.manual_seed(0)
    a, c = torch.randn(3, 4), torch.randn(5, 4)
    pos = torch.tensor([4, 0, 2])
    za, zc = torch.nn.functional.normalize(a, dim=1), torch.nn.functional.normalize(c, dim=1)
    logits = za @ zc.t() / 0.5
    want = sum(torch.logsumexp(logits[i], 0) - logits[i, pos[i]] for i in range(3))
    assert torch.allclose(info_nce(a, c, 0.5, reduction="sum", positives=pos), want, atol=1e-5)
    with pytest.raises(ValueError, match="reduction"):
        info_nce(a, a, 0.5, reduction="max")


def test_edge_dots_match_dense_products_and_their_gradients():
    from mmrec_egra.graphs import _gathered_dots
    A = _random(12, 9, seed=3).tolil()
    A[4, :] = 0                                  # an empty row
    A = sp.csr_matrix(A)
    A.eliminate_zeros()
    S = SparseMat.of(A)
    a = torch.randn(12, 6, dtype=torch.float64, requires_grad=True)
    b = torch.randn(9, 6, dtype=torch.float64, requires_grad=True)
    s = S.edge_dots(a, b)
    ad, bd = a.detach().clone().requires_grad_(), b.detach().clone().requires_grad_()
    dense = (ad @ bd.t())[S.rows, S.cols]
    assert s.shape == (S.nnz,) and torch.allclose(s, dense)
    assert torch.allclose(_gathered_dots(S, a.detach(), b.detach()), dense.detach())   # the non-CPU path
    w = torch.randn(S.nnz, dtype=torch.float64)
    (s * w).sum().backward()
    (dense * w).sum().backward()
    assert torch.allclose(a.grad, ad.grad) and torch.allclose(b.grad, bd.grad)
    assert torch.autograd.gradcheck(lambda x, y: S.edge_dots(x, y), (a.detach().requires_grad_(), b.detach().requires_grad_()))
    with torch.no_grad():
        assert torch.equal(S.edge_dots(a, b), s.detach())             # same numbers without autograd
    with pytest.raises(ValueError, match="do not fit"):
        S.edge_dots(a, a)
