"""install-into / uninstall-from on a temp tree shaped like MMRec's src/."""
import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

from mmrec_egra import list_models
from mmrec_egra.install import MANIFEST, MMREC_MODELS, install_into, installed_name, uninstall_from
from mmrec_egra.utils import MMRecError


def fake_mmrec(root: Path) -> Path:
    src = root / "MMRec" / "src"
    (src / "models").mkdir(parents=True)
    (src / "configs" / "model").mkdir(parents=True)
    (src / "configs" / "dataset").mkdir()
    (src / "common").mkdir()
    (src / "main.py").write_text("# MMRec main\n")
    (src / "configs" / "overall.yaml").write_text("embedding_size: 64\n")
    for name in ("FREEDOM", "LightGCN", "BM3", "VBPR", "LATTICE", "MGCN", "LGMRec", "BPR"):
        (src / "models" / f"{name.lower()}.py").write_text(f"# MMRec's own {name}\nclass {name}: pass\n")
        (src / "configs" / "model" / f"{name}.yaml").write_text(f"# MMRec's {name} config\n")
    return src


def snapshot(root: Path):
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(root.rglob("*"))}


def test_round_trip_is_byte_identical(tmp_path):
    src = fake_mmrec(tmp_path)
    before = snapshot(tmp_path)
    lines = []
    written = install_into(src, echo=lines.append)
    assert "models/egra.py" in written and "configs/model/EGRA.yaml" in written
    # a model MMRec ships is installed next to MMRec's own, under NAME_ME
    assert "models/freedom.py" not in written and "configs/model/FREEDOM.yaml" not in written
    assert "models/freedom_me.py" in written and "configs/model/FREEDOM_ME.yaml" in written
    assert any(l == "FREEDOM -> FREEDOM_ME (MMRec ships its own FREEDOM)" for l in lines)
    assert (src / "models" / "freedom.py").read_text().startswith("# MMRec's own")
    assert (src / "configs" / "model" / "FREEDOM.yaml").read_text() == "# MMRec's FREEDOM config\n"
    thin = (src / "models" / "freedom_me.py").read_text()
    assert "from mmrec_egra.models.freedom import FREEDOM as FREEDOM_ME" in thin
    assert "from mmrec_egra.models.egra import EGRA as EGRA" in (src / "models" / "egra.py").read_text()
    # every registered model is written once, under the name installed_name gives it
    for name in list_models():
        if name.startswith("_"):  # test-only models registered by other test modules are never installed
            continue
        inst = installed_name(name)
        assert f"models/{inst.lower()}.py" in written
        assert inst == (name + "_ME" if name.lower() in {m.lower() for m in MMREC_MODELS} else name)
    assert install_into(src, echo=lines.append) == []                 # idempotent
    uninstall_from(src, echo=lines.append)
    assert snapshot(tmp_path) == before
    uninstall_from(src, echo=lines.append)                            # idempotent
    assert snapshot(tmp_path) == before


def test_installed_names():
    assert installed_name("FREEDOM") == "FREEDOM_ME" and installed_name("lightgcn") == "LightGCN_ME"
    assert installed_name("EGRA") == "EGRA"
    assert installed_name("SIGER") == "SIGE"                  # an alias installs under the primary name


def test_force_backs_up_and_restores(tmp_path):
    src = fake_mmrec(tmp_path)
    (src / "models" / "egra.py").write_text("# a user's own egra.py\n")      # a clash at the target path
    before = snapshot(tmp_path)
    lines = []
    assert install_into(src, models=["EGRA"], echo=lines.append) == []
    assert any(l.startswith("skip EGRA: the tree already has models/egra.py") for l in lines)
    written = install_into(src, models=["EGRA"], force=True, echo=lambda s: None)
    assert "models/egra.py" in written
    assert "mmrec_egra" in (src / "models" / "egra.py").read_text()
    assert (src / ".mmrec_egra_backup" / "models" / "egra.py").read_text() == "# a user's own egra.py\n"
    uninstall_from(src, echo=lambda s: None)
    assert snapshot(tmp_path) == before


def test_edited_files_are_kept(tmp_path):
    src = fake_mmrec(tmp_path)
    install_into(src, models=["EGRA"], echo=lambda s: None)
    (src / "configs" / "model" / "EGRA.yaml").write_text("my edits\n")
    msgs = []
    uninstall_from(src, echo=msgs.append)
    assert (src / "configs" / "model" / "EGRA.yaml").read_text() == "my edits\n"
    assert any("edited since" in m for m in msgs)
    assert not (src / "models" / "egra.py").exists() and (src / MANIFEST).exists()


def test_not_an_mmrec_tree(tmp_path):
    with pytest.raises(MMRecError, match="does not look like MMRec's src/"):
        install_into(tmp_path, echo=lambda s: None)


def test_cli(tmp_path):
    src = fake_mmrec(tmp_path)
    r = subprocess.run([sys.executable, "-m", "mmrec_egra.cli", "install-into", str(src), "-m", "EGRA"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "wrote models/egra.py" in r.stdout
    r = subprocess.run([sys.executable, "-m", "mmrec_egra.cli", "uninstall-from", str(src)],
                       capture_output=True, text=True, timeout=120)
    assert "removed models/egra.py" in r.stdout
