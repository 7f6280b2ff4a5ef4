"""Pop: items ranked by training count for every user; the evaluator's top-k checked by hand."""
import numpy as np
import torch

from model_checks import build, train_epochs
from mmrec_egra.evaluation import TopKEvaluator
from mmrec_egra.registry import get_model


def test_pop_scores_are_training_counts_and_rank_by_hand(make_env):
    assert get_model("pop") is get_model("Pop")
    config, ds, loaders, model = build(make_env, "Pop")
    R = loaders[0].inter_matrix(form="csr").toarray() > 0
    counts = R.sum(axis=0).astype(np.float32)
    users = torch.tensor([0, 3, 1999])
    with torch.no_grad():
        s = model.full_sort_predict((users, None))
    assert s.shape == (3, ds.n_items) and torch.equal(s, torch.as_tensor(counts).expand(3, -1))
    s[0, 0] = -1.0                                    # callers may write into the scores
    assert model.full_sort_predict((users, None))[0, 0] == counts[0]
    assert train_epochs(config, model, loaders, 1) == [0.0]

    ev = TopKEvaluator(config)
    ranked_users, top = ev.rank(model, ev.sampled(loaders[1]))
    assert len(ranked_users) > 100
    for u, row in zip(ranked_users, top):
        row = row[:20]
        assert not R[u, row].any()                    # own training items are masked
        unseen = np.sort(counts[~R[u]])[::-1]
        assert np.array_equal(counts[row], unseen[:20])   # the 20 most counted unseen items (ties: any)
    res = ev.evaluate(model, loaders[1])
    assert res["recall@20"] > 3 * 20 / ds.n_items
