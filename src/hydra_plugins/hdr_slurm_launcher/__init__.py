"""Hydra takes launchers only from hydra_plugins: hdr's SLURM launcher, where Hydra looks."""

from hdr.clusters import slurm


class SlurmLauncher(slurm.SlurmLauncher):
    """hdr.clusters.slurm.SlurmLauncher."""
