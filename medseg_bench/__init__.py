"""medseg-bench: benchmark medical image segmentation configurations on MSD tasks."""

__version__ = "0.1.0"
