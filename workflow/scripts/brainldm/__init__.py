"""brainldm: image reconstruction and encoding analysis from NSD fMRI with latent diffusion models.

The package lives in the workflow tree (``workflow/scripts/brainldm``) so that every Snakemake
rule script imports it from beside itself, inside a per-rule environment that holds only that
rule's pinned packages.
"""

__version__ = "0.1.0"
