from pathlib import Path

from setuptools import find_packages, setup

here = Path(__file__).parent
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
    extras_require={"test": ["pytest>=7"]},
    entry_points={
        "console_scripts": ["mmrec-egra=mmrec_egra.cli:main"],
        "mmrec.models": [],
    },
)
