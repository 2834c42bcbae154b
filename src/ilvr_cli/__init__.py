"""ilvr-cli: ILVR (Choi et al., ICCV 2021) on real images, from the command line and from Python.

Importing this package is cheap: nothing here imports torch. The heavy modules
(``ilvr_cli.models``, ``ilvr_cli.diffusion``, ``ilvr_cli.ilvr``) are imported on first use.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
