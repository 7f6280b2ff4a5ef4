"""Third-party models register through the `mmrec.models` entry-point group."""
import subprocess
import sys
import textwrap

from mmrec_egra import registry


def make_plugin(site):
    """A tiny installed distribution: a package plus its dist-info with an entry point."""
    pkg = site / "tinyrec"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(textwrap.dedent('''
        import torch
        from mmrec_egra.models.base import GeneralRecommender

        class TinyRec(GeneralRecommender):
            """Item popularity as a model: enough to exercise the host."""
            def __init__(self, config, dataloader):
                super().__init__(config, dataloader)
                R = dataloader.inter_matrix(form="csr")
                self.pop = torch.tensor(R.sum(0).A1, dtype=torch.float32)
                self.w = torch.nn.Parameter(torch.zeros(1))

            def calculate_loss(self, interaction):
                return (self.w ** 2).sum() + 1.0

            def full_sort_predict(self, interaction):
                return self.pop.repeat(len(interaction[0]), 1) + self.w
    '''))
    info = site / "tinyrec-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: tinyrec\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[mmrec.models]\nTinyRec = tinyrec:TinyRec\n")
    (info / "RECORD").write_text("")


def test_entry_point_model_is_found(tmp_path, monkeypatch):
    make_plugin(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    registry.reload_entry_points()
    cls = registry.get_model("tinyrec")
    assert cls.__name__ == "TinyRec" and "TinyRec" in registry.list_models()


def test_entry_point_model_runs_from_the_cli(tmp_path, demo_root):
    make_plugin(tmp_path)
    env_path = f"{tmp_path}"
    code = ("import sys; sys.path.insert(0, %r); from mmrec_egra.cli import main_run; "
            "sys.exit(main_run(['-m', 'TinyRec', '-d', 'demo', '--data_path', %r, '--epochs', '2', "
            "'--checkpoint_dir', %r, '--show_progress', 'false']))") % (env_path, demo_root, str(tmp_path / "saved"))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr + r.stdout
    assert "TinyRec on demo" in r.stdout and "best epoch" in r.stdout
