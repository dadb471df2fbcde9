"""p2pcache: a peer-to-peer binary substitute cache for GNU Guix."""

__version__ = "0.1.0.dev0"
