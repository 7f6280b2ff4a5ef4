"""docs/: config.md matches the yamls, links resolve, no machine paths in code or docs."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from mmrec_egra.config import load_yaml
from mmrec_egra.config_docs import FALLBACK, _slug, generate, main, parse_yaml_doc

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def test_config_md_matches_the_yamls():
    committed = (DOCS / "config.md").read_text()
    assert committed == generate(ROOT / "configs"), (
        "docs/config.md differs from configs/*.yaml: run `python -m mmrec_egra.config_docs` and commit the result")


def test_check_mode(tmp_path, capsys):
    out = tmp_path / "config.md"
    assert main(["--check", "--out", str(out)]) == 1                 # missing file: stale
    assert main(["--out", str(out)]) == 0 and out.read_text() == generate()
    assert main(["--check", "--out", str(out)]) == 0
    assert "up to date" in capsys.readouterr().out


def test_parse_yaml_doc_on_a_hand_written_file(tmp_path):
    p = tmp_path / "M.yaml"
    p.write_text(
        "# M (Someone, 2024): a model.\n"
        "# Second header line.\n"
        "\n"
        "# ---- graph ----\n"
        "knn_k: 10                # neighbours\n"
        "                         # per item, self included\n"
        "sep: \"a#b\"               # a '#' inside quotes is part of the value\n"
        "lr: [1e-3, 1e-4]         # learning rates\n"
        "embedding_size: 64\n"
        "# free text between keys\n"
        "arms:\n"
        "  full: {}\n"
        "  no_graph: {knn_k: 0}   # without the graph\n"
        "hyper_parameters: [\"lr\"]\n")
    header, blocks = parse_yaml_doc(p)
    assert header == ["M (Someone, 2024): a model.", "Second header line."]
    assert blocks == [
        ("section", "graph"),
        ("row", "knn_k", "`10`", "neighbours per item, self included"),
        ("row", "sep", "`a#b`", "a '#' inside quotes is part of the value"),
        ("row", "lr", "`[0.001, 0.0001]`", "**grid key** (hyper_parameters); learning rates"),
        ("row", "embedding_size", "`64`", FALLBACK["embedding_size"]),
        ("para", "free text between keys"),
        ("row", "arms", "`full: {}`<br>`no_graph: {knn_k: 0}` (without the graph)", ""),
        ("para", "Grid (`hyper_parameters`): `[lr]`; the run covers the product of these keys' lists "
                 "(with `seed` first)."),
    ]


def _yamls():
    conf = ROOT / "configs"
    return [conf / "overall.yaml"] + sorted((conf / "dataset").glob("*.yaml")) + sorted((conf / "model").glob("*.yaml"))


def test_every_key_of_every_yaml_is_documented():
    text = generate(ROOT / "configs")
    for path in _yamls():
        rel = path.relative_to(ROOT).as_posix()
        section = text.split(f"`{rel}`", 1)[1].split("\n### ", 1)[0]
        for key in load_yaml(path):
            if key != "hyper_parameters":
                assert f"| `{key}` |" in section, f"{key} of {rel} missing from docs/config.md"


def test_every_global_key_has_a_description():
    _, blocks = parse_yaml_doc(ROOT / "configs" / "overall.yaml")
    empty = [b[1] for b in blocks if b[0] == "row" and not b[3]]
    assert empty == [], f"keys of configs/overall.yaml without a comment: {empty} (add one in the yaml)"


def _markdown_files():
    return [ROOT / "README.md"] + sorted(DOCS.glob("*.md"))


def _anchors(md: Path):
    return {_slug(m.group(1).strip()) for m in re.finditer(r"^#+\s+(.*)$", md.read_text(), re.M)}


@pytest.mark.parametrize("md", _markdown_files(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_resolve(md):
    text = re.sub(r"```.*?```", "", md.read_text(), flags=re.S)     # code blocks hold no links
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"^[a-z]+:", target):
            continue                                                   # http:, mailto:, ...
        path, _, anchor = target.partition("#")
        dest = (md.parent / path).resolve() if path else md
        assert dest.exists(), f"{md.relative_to(ROOT)} links to {target}: {dest} does not exist"
        if anchor and dest.suffix == ".md":
            assert anchor in _anchors(dest), f"{md.relative_to(ROOT)} links to {target}: no such heading"


# A path of one machine: a home or work folder, a user profile, a drive letter.
MACHINE_PATH = re.compile(r"(?<![\w.])(/work/|/home/\w|/Users/\w|/root/|[A-Z]:\\\\)")


def test_no_machine_paths_in_code_or_docs():
    files = [p for p in ROOT.glob("mmrec_egra/**/*.py")] + [ROOT / "main.py", ROOT / "setup.py", ROOT / "README.md"]
    files += list(ROOT.glob("benchmarks/*.py")) + list(DOCS.glob("*.md")) + _yamls()
    hits = []
    for f in files:
        for n, line in enumerate(f.read_text(errors="replace").splitlines(), 1):
            if MACHINE_PATH.search(line):
                hits.append(f"{f.relative_to(ROOT)}:{n}: {line.strip()}")
    assert not hits, "machine-specific paths:\n" + "\n".join(hits)
