"""Image-quality metrics of the seed's tables, numerically equal to their reference implementations.

- :mod:`ilvr_cli.metrics.fid`: Frechet Inception Distance (Heusel et al. 2017) as pytorch-fid 0.3.0
  computes it (``legacy`` preprocessing) or with clean-fid's resize (``clean``), on the FID Inception
  network of :mod:`ilvr_cli.metrics.inception`.
- :mod:`ilvr_cli.metrics.niqe`: NIQE (Mittal et al. 2012) as the MATLAB release computes it, with the
  release's pristine model shipped in ``ilvr_cli/data/niqe_params.npz``.
- :mod:`ilvr_cli.metrics.fid_run`, :mod:`ilvr_cli.metrics.niqe_run`: the pipelines behind ``ilvr fid`` and
  ``ilvr niqe`` over folders (scan, score, failures), reporting progress through
  :class:`~ilvr_cli.metrics.progress.MetricProgress`.

Importing this package imports neither torch nor scipy; :mod:`~ilvr_cli.metrics.niqe` needs only numpy and
Pillow, and the torch parts of FID load when their module is imported.
"""
