"""What a user and an operator see: status text, the live view, metrics, warmup and benchmarks.

Everything here reads the daemon's `stats` dictionary through `nffs.ui.view`, the one
place that knows its keys, so the storage core can change what it reports without
breaking the renderers (a missing key prints as a dash and is left out of the metrics).
"""
