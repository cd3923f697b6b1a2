"""simclr: SimCLR (Chen et al., 2020) and its v2 refinements, faithful and fast."""

__version__ = "0.1.0"
