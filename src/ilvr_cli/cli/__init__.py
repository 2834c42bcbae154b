"""Command-line layer: parses options, renders progress and results, maps errors to exit codes.

Nothing here does tensor math; heavy modules are imported inside the command functions so that
``ilvr --help`` and ``ilvr --version`` never import torch.
"""
