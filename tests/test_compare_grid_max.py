"""compare --grid-max: every model's grid cut to at most N combinations the same way."""
import json

import pytest

from mmrec_egra.compare import cut_grid, main
from mmrec_egra.utils import MMRecError


def test_cut_grid_keeps_first_and_last_evenly_spaced():
    combos = [{"i": i} for i in range(20)]
    assert cut_grid(combos, 6) == [{"i": i} for i in (0, 4, 8, 11, 15, 19)]
    assert cut_grid(combos, 1) == [{"i": 0}]                     # the default configuration
    assert cut_grid(combos[:3], 6) == combos[:3]                 # small grids run whole
    with pytest.raises(MMRecError, match="--grid-max must be at least 1, found 0"):
        cut_grid(combos, 0)


def test_compare_grid_max_runs_the_cut_and_selects_on_valid(demo_root, tmp_path):
    out = tmp_path / "table"
    argv = ["-d", "demo", "-m", "BPR", "--seeds", "999", "--grid-max", "2", "--out", str(out),
            "--data_path", demo_root, "--checkpoint_dir", str(tmp_path / "saved"), "--epochs", "2",
            "--stopping_step", "1", "--device", "cpu"]
    assert main(argv) == 0
    results = [json.loads(f.read_text()) for f in (tmp_path / "saved" / "BPR-demo").glob("*/result.json")]
    # BPR's grid is reg_weight {1e-5, 1e-4, 1e-3, 1e-2, 1e-1}: 2 of 5 -> first and last
    assert sorted(r["combination"]["reg_weight"] for r in results) == [1e-5, 0.1]
    best = max(results, key=lambda r: r["result"]["best_valid"]["recall@20"])
    row = json.loads((out / "runs.json").read_text())[0]
    assert row["runs"][0]["combination"]["reg_weight"] == best["combination"]["reg_weight"]
    assert "grid cut to at most 2 combinations" in (out / "table.md").read_text()
