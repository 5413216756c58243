"""edgekd: distil, prune and quantize an image classifier into an INT8 model that fits an edge device."""

__version__ = "0.1.0"
