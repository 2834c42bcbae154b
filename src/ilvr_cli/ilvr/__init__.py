"""ILVR (Choi et al. 2021): the low-pass filter phi_N and the refinement hook of Algorithm 1.

``LowPass`` needs only torch; importing the hook also imports ``ilvr_cli.diffusion`` (for its types).
"""

from ilvr_cli.ilvr.lowpass import LowPass, resize_matrix
from ilvr_cli.ilvr.refine import ILVRHook, MaskedILVRHook, conditioned_steps, reference_levels

__all__ = ["ILVRHook", "LowPass", "MaskedILVRHook", "conditioned_steps", "reference_levels", "resize_matrix"]
