"""What Guix speaks: nix-base32, store paths, NAR, narinfo, s-expressions, keys and signatures.

Everything here is a pure format: bytes in, values out, no I/O beyond the file trees the NAR
writer and restorer are asked to walk or create.
"""
