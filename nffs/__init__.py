"""nffs - the neural field file system."""

__version__ = "0.1.0"
