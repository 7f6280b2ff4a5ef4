"""Structure of the package: shared pieces defined once, no import cycle between the run
layers, and refactors that leave every number unchanged (exact demo metrics)."""
from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "mmrec_egra"
REFERENCE = Path(__file__).resolve().parent / "data" / "demo_identity.json"


def _import_graph() -> dict:
    """module -> package modules it imports anywhere in its source (function-level imports too)."""
    mods = {}
    for p in PKG.rglob("*.py"):
        parts = p.relative_to(PKG.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        mods[name] = p
    graph = {m: set() for m in mods}
    for m, p in mods.items():
        pkg = m if p.name == "__init__.py" else m.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                base = ".".join(pkg.split(".")[: len(pkg.split(".")) - node.level + 1])
                target = f"{base}.{node.module}" if node.module else base
                for t in [target] + [f"{target}.{a.name}" for a in node.names]:
                    if t in mods and t != m:
                        graph[m].add(t)
    return graph


def _reaches(graph: dict, start: str, goal: str) -> bool:
    seen, todo = set(), [start]
    while todo:
        m = todo.pop()
        for n in graph[m]:
            if n == goal:
                return True
            if n not in seen:
                seen.add(n)
                todo.append(n)
    return False


def test_runner_and_pipeline_are_in_no_import_cycle():
    graph = _import_graph()
    for mod in ("mmrec_egra.runner", "mmrec_egra.pipeline", "mmrec_egra.fit", "mmrec_egra.trainer"):
        assert not _reaches(graph, mod, mod), f"{mod} imports itself through a cycle"
    assert _reaches(graph, "mmrec_egra.runner", "mmrec_egra.pipeline")      # the graph is real


def test_shared_pieces_are_defined_once():
    """One sparse type, one config accessor, one InfoNCE: no second definition anywhere."""
    patterns = {r"^class \w*Sparse\w*\b": ["graphs.py"], r"^def config_value\b|^def _cfg\b": ["config.py"],
                r"^def \w*info_nce\w*\b|^def \w*infonce\w*": ["losses.py"], r"^def spmm\b": []}
    for pat, allowed in patterns.items():
        found = sorted(p.name for p in PKG.rglob("*.py") for line in p.read_text().splitlines()
                       if re.match(pat, line.strip()))
        assert found == allowed, f"{pat}: defined in {found}, expected only {allowed}"


def _reference() -> dict:
    return json.loads(REFERENCE.read_text())


FAST_MODELS = ["BPR", "LightGCN", "FREEDOM", "LATTICE", "DualGNN", "PGL", "SELFCFED_LGN", "DRAGON", "LGMRec",
               "ItemKNNCBF", "MGCN", "EGRA"]


@pytest.mark.parametrize("name", FAST_MODELS)
def test_demo_metrics_identical_to_reference(demo_root, tmp_path, name):
    """Two epochs on demo reproduce tests/data/demo_identity.json bit for bit on a machine with
    the recording machine's kernels (torch version, CPU model, vector instruction sets: see
    identity_run.machine); regenerate it only for a change meant to alter numbers
    (`python tests/identity_run.py tests/data/demo_identity.json`). Elsewhere float reductions
    differ in the last bits: the losses must agree to 1e-6 relative, and the metrics to 1e-4
    absolute, since a last-bit score difference can swap two tied items in one user's ranking
    (measured between a Zen 3 and a Zen 4 EPYC: losses 3e-9 apart, DRAGON's test map@10 5e-6)."""
    import identity_run
    ref = _reference()
    got = identity_run.run_model(name, demo_root, str(tmp_path / "work"))
    want = ref["models"][name]
    if identity_run.machine() == ref["machine"]:
        assert got == want
    else:
        assert got["losses"] == pytest.approx(want["losses"], rel=1e-6)
        for split in ("valid", "test"):
            assert sorted(got[split]) == sorted(want[split])
            for k in want[split]:
                assert got[split][k] == pytest.approx(want[split][k], rel=0, abs=1e-4), (split, k)


def test_compare_stops_with_one_line_on_interrupt(monkeypatch, capsys):
    """Ctrl-C / SIGTERM during compare: no traceback, one line, exit code 128 + signal."""
    import signal as sig
    from mmrec_egra import compare
    from mmrec_egra.trainer import RunInterrupted

    def stopped(*a, **k):
        raise RunInterrupted("SIGTERM: stopped after epoch 3, last.pt written", int(sig.SIGTERM))
    monkeypatch.setattr(compare, "run_entries", stopped)
    assert compare.main(["-d", "demo", "-m", "BPR"]) == 128 + int(sig.SIGTERM)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("interrupted: SIGTERM: stopped after epoch 3") and "reuses" in err[0]

    def ctrl_c(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(compare, "run_entries", ctrl_c)
    assert compare.main(["-d", "demo", "-m", "BPR"]) == 130
    assert capsys.readouterr().err.startswith("interrupted: ")
