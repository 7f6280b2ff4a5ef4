"""An imitation of MMRec's host, written from the contract alone, runs every registered model.

MMRec imports `models.<name lower>` and takes attribute NAME, builds the model with
(config, dataloader) where config is dict-like (missing -> None, grid values already
scalars) and the dataloader offers only dataset.get_user_num(), dataset.get_item_num()
and inter_matrix(form). Its trainer calls pre_epoch_processing, calculate_loss (summing a
tuple), post_epoch_processing, and full_sort_predict with the mask applied outside.
"""
import importlib
import sys

import numpy as np
import pytest
import scipy.sparse as sp
import torch
import yaml

from mmrec_egra import list_models
from mmrec_egra.install import install_into, installed_name

# the keys of MMRec's overall.yaml that the contract lists (nothing of ours)
MMREC_OVERALL = {
    "embedding_size": 64, "seed": [999], "inter_splitting_label": "x_label", "filter_out_cod_start_users": True,
    "is_multimodal_model": True, "epochs": 1000, "stopping_step": 20, "train_batch_size": 2048, "learner": "adam",
    "learning_rate": 0.001, "learning_rate_scheduler": [1.0, 50], "weight_decay": 0.0, "eval_step": 1,
    "use_neg_sampling": True, "use_full_sampling": False, "USER_ID_FIELD": "userID", "ITEM_ID_FIELD": "itemID",
    "field_separator": "\t", "metrics": ["Recall", "NDCG", "Precision", "MAP"], "topk": [5, 10, 20, 50],
    "valid_metric": "Recall@20", "eval_batch_size": 4096, "vision_feature_file": "image_feat.npy",
    "text_feature_file": "text_feat.npy", "inter_file_name": "demo.inter", "hyper_parameters": ["seed"],
}


class MMRecLikeConfig:
    """Only what MMRec's Config offers: [] with None for missing keys, `in`, item assignment."""

    def __init__(self, d):
        self.final_config_dict = d

    def __getitem__(self, k):
        return self.final_config_dict.get(k)

    def __setitem__(self, k, v):
        self.final_config_dict[k] = v

    def __contains__(self, k):
        return k in self.final_config_dict


class _Dataset:
    def __init__(self, n_users, n_items):
        self._n = (n_users, n_items)

    def get_user_num(self):
        return self._n[0]

    def get_item_num(self):
        return self._n[1]


class MMRecLikeTrainLoader:
    """dataset.get_user_num/get_item_num, inter_matrix(form), iteration over [3, B] (or [2, B])."""

    def __init__(self, users, items, n_users, n_items, batch_size, neg_sampling=True):
        self.dataset = _Dataset(n_users, n_items)
        self.u, self.i = users, items
        self.n_items = n_items
        self.batch_size = batch_size
        self.neg = neg_sampling
        self.rng = np.random.default_rng(0)

    def inter_matrix(self, form="coo"):
        m = sp.coo_matrix((np.ones(len(self.u), dtype=np.float32), (self.u, self.i)),
                          shape=(self.dataset.get_user_num(), self.n_items))
        return m.tocsr() if form == "csr" else m

    def pretrain_setup(self):
        pass

    def __iter__(self):
        order = self.rng.permutation(len(self.u))
        for s in range(0, len(order), self.batch_size):
            idx = order[s:s + self.batch_size]
            rows = [self.u[idx], self.i[idx]]
            if self.neg:
                rows.append(self.rng.integers(0, self.n_items, len(idx)))
            yield torch.as_tensor(np.stack(rows), dtype=torch.long)


@pytest.fixture(scope="module")
def mmrec_src(tmp_path_factory):
    src = tmp_path_factory.mktemp("MMRec") / "src"
    (src / "models").mkdir(parents=True)
    (src / "models" / "__init__.py").write_text("")
    (src / "configs" / "model").mkdir(parents=True)
    (src / "configs" / "dataset").mkdir()
    (src / "configs" / "overall.yaml").write_text(yaml.safe_dump(MMREC_OVERALL))
    install_into(src, echo=lambda s: None)
    sys.path.insert(0, str(src))
    for mod in [m for m in sys.modules if m == "models" or m.startswith("models.")]:
        del sys.modules[mod]
    yield src
    sys.path.remove(str(src))
    for mod in [m for m in sys.modules if m == "models" or m.startswith("models.")]:
        del sys.modules[mod]


def mmrec_config(src, name, demo_root):
    """overall -> model yaml (MMRec reads 1e-4 as float too: our yaml files write floats with a dot).

    `name`: the name the model is installed under (NAME_ME for names MMRec ships)."""
    d = dict(MMREC_OVERALL)
    from mmrec_egra.config import load_yaml
    model_yaml = src / "configs" / "model" / f"{name}.yaml"
    hyper = list(d["hyper_parameters"])
    if model_yaml.is_file():
        m = load_yaml(model_yaml)
        hyper += m.pop("hyper_parameters", []) or []
        d.update(m)
    for k in hyper:                     # the host hands the model one grid point: scalars
        if isinstance(d.get(k), list):
            d[k] = d[k][0]
    d.update({"model": name, "dataset": "demo", "data_path": demo_root, "device": torch.device("cpu"),
              "teacher_epochs": 1})
    return MMRecLikeConfig(d)


@pytest.mark.parametrize("name", [m for m in list_models() if not m.startswith("_")])
def test_model_runs_in_imitation_host(name, mmrec_src, demo_root):
    import pandas as pd
    inter = pd.read_csv(f"{demo_root}demo/demo.inter", sep="\t")
    tr = inter[inter.x_label == 0]
    n_users, n_items = int(inter.userID.max()) + 1, int(inter.itemID.max()) + 1
    name = installed_name(name)          # what a user passes to MMRec's -m
    assert (mmrec_src / "configs" / "model" / f"{name}.yaml").is_file()
    config = mmrec_config(mmrec_src, name, demo_root)
    torch.manual_seed(999)
    module = importlib.import_module(f"models.{name.lower()}")
    cls = getattr(module, name)
    loader = MMRecLikeTrainLoader(tr.userID.to_numpy(), tr.itemID.to_numpy(), n_users, n_items, 2048,
                                  neg_sampling=config["use_neg_sampling"] is not False)
    model = cls(config, loader)
    opt = torch.optim.Adam(model.parameters(), lr=config["learning_rate"])
    model.train()
    model.pre_epoch_processing()
    for b, batch in enumerate(loader):
        loss = model.calculate_loss(batch)
        loss = sum(loss) if isinstance(loss, tuple) else loss
        assert torch.isfinite(loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if b == 2:
            break
    model.post_epoch_processing()
    model.eval()
    with torch.no_grad():
        users = torch.arange(10)
        scores = model.full_sort_predict([users])
        R = loader.inter_matrix("csr")[users.numpy()].tocoo()
        scores[R.row, R.col] = -1e10            # MMRec masks training items outside the model
        top = torch.topk(scores, 20).indices
    assert scores.shape == (10, n_items) and top.shape == (10, 20)
