"""Derivations (`.drv` files) the way Guix writes them, and the output paths Guix gives them.

The test store generator uses this so that its `.drv` items and their outputs look exactly like
a real store's: the text is Guix's `write-derivation` ATerm, and each output path is computed
from the derivation as Guix's `derivation` procedure and Nix's `hashDerivationModulo` do, which
lets Nix itself check them (Nix refuses to register a `.drv` whose output paths are wrong).

Only input-addressed derivations are made here (no fixed-output ones): that is what a store's
packages are.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace

from p2pcache.guix.store_path import DEFAULT_STORE_DIR, make_store_path


@dataclass(frozen=True, slots=True)
class Derivation:
    """The fields of a derivation, each kept in the order Guix writes it (sorted)."""

    outputs: tuple[tuple[str, str], ...]  # (output name, output path)
    input_drvs: tuple[tuple[str, tuple[str, ...]], ...]  # (.drv path, output names)
    input_srcs: tuple[str, ...]
    system: str
    builder: str
    args: tuple[str, ...]
    env: tuple[tuple[str, str], ...]


def _quote(text: str) -> str:
    """An ATerm string: double quotes, with the escapes Guix's `write-derivation` uses."""
    escaped = (
        text.replace("\\", "\\\\")
        .replace('"', '\\"')
        .replace("\n", "\\n")
        .replace("\r", "\\r")
        .replace("\t", "\\t")
    )
    return f'"{escaped}"'


def _list(items: Iterable[str]) -> str:
    return "[" + ",".join(items) + "]"


def render_derivation(drv: Derivation) -> str:
    """The text of a `.drv` file: `Derive([outputs],[inputs],[sources],system,builder,...)`."""
    outputs = _list(f'({_quote(name)},{_quote(path)},"","")' for name, path in drv.outputs)
    inputs = _list(
        f"({_quote(path)},{_list(_quote(o) for o in names)})" for path, names in drv.input_drvs
    )
    env = _list(f"({_quote(k)},{_quote(v)})" for k, v in drv.env)
    return (
        f"Derive({outputs},{inputs},{_list(_quote(s) for s in drv.input_srcs)},"
        f"{_quote(drv.system)},{_quote(drv.builder)},{_list(_quote(a) for a in drv.args)},{env})"
    )


def derivation_hash(drv: Derivation, input_hashes: Mapping[str, bytes]) -> bytes:
    """Guix's `derivation-hash` (Nix's `hashDerivationModulo`) of an input-addressed derivation.

    Each input `.drv` path is replaced by the base16 of its own derivation hash (taken from
    `input_hashes`), the inputs are sorted again by that, and the text is hashed. This is what
    output paths are computed from, and what dependent derivations use in place of the path.
    """
    masked_inputs = tuple(
        sorted((input_hashes[path].hex(), names) for path, names in drv.input_drvs)
    )
    return hashlib.sha256(
        render_derivation(replace(drv, input_drvs=masked_inputs)).encode()
    ).digest()


def output_path_name(name: str, output: str) -> str:
    """The store name of an output: the derivation's name, plus `-<output>` unless `out`."""
    return name if output == "out" else f"{name}-{output}"


def make_derivation(
    name: str,
    *,
    outputs: Iterable[str],
    input_drvs: Mapping[str, Iterable[str]],
    input_srcs: Iterable[str],
    system: str,
    builder: str,
    args: Iterable[str],
    env: Mapping[str, str],
    input_hashes: Mapping[str, bytes],
    store_dir: str = DEFAULT_STORE_DIR,
) -> Derivation:
    """A derivation with its output paths filled in as Guix's `derivation` procedure does.

    The outputs and the environment variables named after them are first left empty, the
    derivation hash of that is computed, and each output path is `output:<name>` over it.
    `input_hashes` gives the derivation hash of every input `.drv`.
    """
    names = sorted(set(outputs))
    blank = Derivation(
        outputs=tuple((o, "") for o in names),
        input_drvs=tuple(sorted((p, tuple(sorted(set(os)))) for p, os in input_drvs.items())),
        input_srcs=tuple(sorted(set(input_srcs))),
        system=system,
        builder=builder,
        args=tuple(args),
        env=tuple(sorted({**env, **dict.fromkeys(names, "")}.items())),
    )
    digest = derivation_hash(blank, input_hashes)
    paths = {
        o: make_store_path(f"output:{o}", digest, output_path_name(name, o), store_dir).path
        for o in names
    }
    return replace(
        blank,
        outputs=tuple((o, paths[o]) for o in names),
        env=tuple(sorted({**env, **paths}.items())),
    )


def derivation_references(drv: Derivation) -> tuple[str, ...]:
    """What a `.drv` item refers to in the store: its input derivations and sources."""
    return tuple(sorted({path for path, _ in drv.input_drvs} | set(drv.input_srcs)))


def derivation_store_path(drv: Derivation, name: str, store_dir: str = DEFAULT_STORE_DIR) -> str:
    """The path of the `.drv` item: a text item (`text:<refs>`, sha256 of the text)."""
    return text_store_path(
        render_derivation(drv).encode(), f"{name}.drv", derivation_references(drv), store_dir
    )


def text_store_path(
    text: bytes, name: str, references: Iterable[str], store_dir: str = DEFAULT_STORE_DIR
) -> str:
    """The path `add-text-to-store` gives a text: type `text:<ref>...`, over sha256(text).

    Unlike `source` items, the inner hash is that of the text itself, not of its NAR.
    """
    type_ = "text" + "".join(f":{ref}" for ref in sorted(set(references)))
    return make_store_path(type_, hashlib.sha256(text).digest(), name, store_dir).path
