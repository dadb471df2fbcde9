"""A realistic Guix-like store for tests and demos: files on disk plus the daemon's database.

`generate_test_store(root)` writes `root/store/<hash>-<name>/...` (where the files really are)
and `root/db/db.sqlite` (Guix's schema, WAL mode), while every store path, reference, deriver
and narinfo says `/gnu/store` (the logical store directory; see DESIGN.md, "Where the store
is"). Everything is determined by the seed.

What is in it, item by item in registration order (so ids grow and references point back):

* a bootstrap `bash` (a single executable file, as Guix's bootstrap binaries are);
* per package: its source (`hello-2.12.2.tar.gz`, or a `-checkout` directory), sometimes a
  `-builder` script (a text item referring to the source and the inputs), the `.drv` (text,
  Guix's ATerm, referring to its input derivations and sources), then its outputs, each with
  Deriver set to the `.drv`. A few packages are left unbuilt: their `.drv` is valid, their
  outputs are not (as after a failed or never-run build);
* outputs refer to outputs of earlier packages and, often, to themselves, and contain those
  store paths as text (scripts, RPATHs, `.la` files, symlinks, debug directory names).

Store paths are computed the way Guix computes them: sources by `source_store_path` over their
NAR hash, text items (`.drv`, builders) by `text:<refs>` over their text, outputs from their
derivation (`derivation_hash`), so that Nix's own checks accept the items.

Measured 2026-11-25 on the 2-core development machine: 300 items (6 of them 1-20 MB) in
about 1 s, mostly spent writing and hashing the big files.
"""

from __future__ import annotations

import random
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from p2pcache.guix.nar import dump_nar
from p2pcache.guix.store_db import StoreItemInfo
from p2pcache.guix.store_path import (
    DEFAULT_STORE_DIR,
    check_store_dir,
    parse_store_path,
    source_store_path,
)
from p2pcache.testing.derivation import (
    derivation_hash,
    derivation_references,
    derivation_store_path,
    make_derivation,
    render_derivation,
    text_store_path,
)
from p2pcache.testing.file_tree import Node, Regular, remove_read_only_tree, write_tree
from p2pcache.testing.guix_db_writer import (
    create_store_database,
    open_for_writing,
    register_derivation_outputs,
    register_valid_path,
)
from p2pcache.testing.package_content import (
    CORE_PACKAGES,
    SMALL_FILE_MAX,
    Package,
    builder_script,
    output_tree,
    source_item,
    synthetic_package,
)

DEFAULT_MAX_FILE_SIZE = 20 << 20
LARGE_FILE_MIN = 1 << 20
SYSTEM = "x86_64-linux"
# Registration times start here (2025-01-01) and advance a few seconds per item.
FIRST_REGISTRATION_TIME = 1_735_689_600
_UNBUILT_RATE = 0.05  # share of packages whose outputs were never built


@dataclass
class TestStore:
    """A generated store: where it is, and what the database says about every item.

    `items` are in registration (id) order and equal what `GuixStoreDatabase` reads back.
    `derivation_outputs` maps every `.drv` path to its outputs (built or not).
    """

    __test__: ClassVar[bool] = False  # not a pytest test class, despite the name

    root: Path
    store_root: Path
    db_path: Path
    store_dir: str
    seed: int
    items: list[StoreItemInfo] = field(default_factory=list)
    derivation_outputs: dict[str, dict[str, str]] = field(default_factory=dict)
    bootstrap_shell: str = ""
    # Guix's derivation hash of every .drv, needed to add derivations that depend on them.
    derivation_hashes: dict[str, bytes] = field(default_factory=dict, repr=False)

    def real_path(self, store_path: str) -> Path:
        """Where the files of `store_path` (under `store_dir`) are on disk."""
        return self.store_root / parse_store_path(store_path, self.store_dir).basename

    def by_path(self, store_path: str) -> StoreItemInfo | None:
        return next((i for i in self.items if i.path == store_path), None)

    def by_hash_part(self, hash_part: str) -> StoreItemInfo | None:
        prefix = f"{self.store_dir}/{hash_part}-"
        return next((i for i in self.items if i.path.startswith(prefix)), None)

    def derivations(self) -> list[StoreItemInfo]:
        return [i for i in self.items if i.path.endswith(".drv")]

    @property
    def total_nar_size(self) -> int:
        return sum(i.nar_size or 0 for i in self.items)


def generate_test_store(
    root: Path,
    *,
    items: int = 300,
    seed: int = 0,
    store_dir: str = DEFAULT_STORE_DIR,
    max_file_size: int = DEFAULT_MAX_FILE_SIZE,
    large_items: int | None = None,
) -> TestStore:
    """Generate a store of exactly `items` valid items under `root` (created if needed).

    `large_items` outputs (default: one in fifty) get one file of 1 MiB to `max_file_size`;
    every other file is at most min(48 KiB, `max_file_size`). Remove it with
    `remove_test_store` (its files are read-only, as in a real store).
    """
    check_store_dir(store_dir)
    if items < 1:
        raise ValueError("a test store has at least one item")
    root = Path(root)
    store = TestStore(
        root=root,
        store_root=root / "store",
        db_path=root / "db" / "db.sqlite",
        store_dir=store_dir,
        seed=seed,
    )
    store.store_root.mkdir(parents=True, exist_ok=True)
    create_store_database(store.db_path)
    _StoreBuilder(store, seed, max_file_size, large_items, items).add(items)
    return store


def add_items(store: TestStore, count: int, *, seed: int | None = None) -> list[StoreItemInfo]:
    """Build `count` more items into `store` (new packages that may depend on the old ones).

    They are registered the way the daemon registers new items (new rows, larger ids) while
    readers may have the database open. Returns the new items, also appended to `store.items`.
    Without a `seed`, one is derived from the store's seed and size, so that repeated calls
    add different packages and the whole sequence stays deterministic. No big files are added.
    """
    before = len(store.items)
    chosen = f"{store.seed}+{before}" if seed is None else seed
    _StoreBuilder(store, chosen, DEFAULT_MAX_FILE_SIZE, 0, count).add(count)
    return store.items[before:]


def remove_test_store(root: Path) -> None:
    """Delete a generated store (its directories are read-only, so rmtree alone cannot)."""
    root = Path(root)
    if root.exists() and not (root / "db" / "db.sqlite").is_file():
        raise ValueError(f"{root} does not look like a generated test store; not removing it")
    remove_read_only_tree(root)


@dataclass(frozen=True, slots=True)
class _Built:
    """A package whose outputs are valid, as a dependency of later packages."""

    drv: str
    outputs: dict[str, str]


class _StoreBuilder:
    """Adds items to a TestStore: writes the files, hashes them, registers them."""

    def __init__(
        self,
        store: TestStore,
        seed: int | str,
        max_file_size: int,
        large_items: int | None,
        count: int,
    ) -> None:
        self.store = store
        self.rng = random.Random(f"p2pcache-test-store:{seed}")
        self.max_small = max(1, min(SMALL_FILE_MAX, max_file_size))
        self.max_file_size = max_file_size
        self.large_left = count // 50 if large_items is None else large_items
        self.paths: set[str] = {i.path for i in store.items}
        self.names: set[str] = {self._name(i.path).removesuffix(".drv") for i in store.items}
        self.built: list[_Built] = [
            _Built(drv, outs)
            for drv, outs in store.derivation_outputs.items()
            if all(p in self.paths for p in outs.values())
        ]
        last = store.items[-1].registration_time if store.items else FIRST_REGISTRATION_TIME
        self.clock = last
        self.pending: list[_Pending] = []

    def _name(self, path: str) -> str:
        return parse_store_path(path, self.store.store_dir).name

    # -- planning -----------------------------------------------------------------------------

    def add(self, count: int) -> None:
        """Plan and write `count` items, then register them in one transaction."""
        left = count
        if not self.store.bootstrap_shell:
            shell = b"\x7fELF static bash\0" + self.rng.randbytes(6000)
            self.store.bootstrap_shell = self._add_source("bash", Regular(shell, executable=True))
            left -= 1
        catalogue = iter(CORE_PACKAGES)
        while left > 0:
            package = self._next_package(catalogue)
            left -= self._add_package(package, left)
        self._register()

    def _next_package(self, catalogue: Iterator[Package]) -> Package:
        for package in catalogue:
            if package.full_name not in self.names:
                return package
        while True:
            package = synthetic_package(self.rng)
            if package.full_name not in self.names:
                return package

    def _add_package(self, package: Package, budget: int) -> int:
        """Add up to `budget` items for `package`; returns how many were added."""
        self.names.add(package.full_name)
        deps = self._choose_dependencies(package)
        source_name, source_tree = source_item(self.rng, package)
        source = self._add_source(source_name, source_tree)
        added = 1
        srcs = [source, self.store.bootstrap_shell]
        if budget - added >= 2 and package.kind == "gnu" and self.rng.random() < 0.4:
            inputs = {self._name(d.drv).removesuffix(".drv"): d.outputs["out"] for d in deps}
            text = builder_script(package, source, inputs)
            refs = tuple(sorted({source, *inputs.values()}))
            srcs.append(self._add_text(f"{package.full_name}-builder", text, refs))
            added += 1
        if added == budget:
            return added
        drv = make_derivation(
            package.full_name,
            outputs=package.outputs,
            input_drvs={d.drv: ["out"] for d in deps},
            input_srcs=srcs,
            system=SYSTEM,
            builder=self.store.bootstrap_shell,
            args=["-e", srcs[-1]],
            env={"name": package.full_name, "system": SYSTEM},
            input_hashes=self.store.derivation_hashes,
            store_dir=self.store.store_dir,
        )
        drv_path = derivation_store_path(drv, package.full_name, self.store.store_dir)
        self.store.derivation_hashes[drv_path] = derivation_hash(drv, self.store.derivation_hashes)
        outputs = dict(drv.outputs)
        self._add_text(
            self._name(drv_path),
            render_derivation(drv).encode(),
            derivation_references(drv),
            outputs=outputs,
        )
        added += 1
        if self.rng.random() < _UNBUILT_RATE or budget - added < len(outputs):
            return added
        for name in package.outputs:
            added += self._add_output(package, name, outputs, deps, drv_path)
        self.built.append(_Built(drv_path, outputs))
        return added

    def _choose_dependencies(self, package: Package) -> list[_Built]:
        """Earlier packages this one builds on: a few favourites (glibc, gcc) and a few others."""
        if not self.built:
            return []
        if package.kind == "alias":
            return [self.rng.choice(self.built)]
        if package.kind == "empty":
            return []
        core = self.built[:3]
        others = self.rng.sample(self.built, k=min(len(self.built), self.rng.randint(0, 4)))
        chosen = {d.drv: d for d in [*core[: self.rng.randint(1, len(core))], *others]}
        return list(chosen.values())

    def _add_output(
        self,
        package: Package,
        output: str,
        outputs: dict[str, str],
        deps: list[_Built],
        drv_path: str,
    ) -> int:
        path = outputs[output]
        refs = [d.outputs["out"] for d in deps]
        if package.kind == "gnu":
            # A shell first (scripts use it), runtime dependencies, sibling outputs built before.
            siblings = [outputs[o] for o in package.outputs[: package.outputs.index(output)]]
            refs = [self.store.bootstrap_shell, *self.rng.sample(refs, (len(refs) + 1) // 2)]
            refs += [s for s in siblings if output == "debug" or self.rng.random() < 0.3]
            refs = list(dict.fromkeys(refs))
            if output == "debug" and siblings:
                refs = [r for r in refs if r != siblings[0]] + [siblings[0]]
        elif package.kind == "single-file":
            refs = [self.store.bootstrap_shell, *refs]
        refers_to_itself = package.kind in ("gnu", "single-file") and self.rng.random() < 0.6
        large = 0
        if self.large_left > 0 and package.kind == "gnu" and self.rng.random() < 0.3:
            self.large_left -= 1
            low = min(LARGE_FILE_MIN, self.max_file_size // 2)
            large = self.rng.randint(low, self.max_file_size)
        tree = output_tree(
            self.rng,
            package,
            output,
            path,
            refs,
            refers_to_itself=refers_to_itself,
            large_file=large,
            max_small=self.max_small,
        )
        all_refs = tuple(sorted({*refs, *([path] if refers_to_itself else [])}))
        self._write(path, tree, all_refs, deriver=drv_path)
        return 1

    # -- writing ------------------------------------------------------------------------------

    def _add_source(self, name: str, tree: Node) -> str:
        """An `add-to-store` item: its path depends on its NAR, so write first, then rename."""
        with tempfile.TemporaryDirectory(dir=self.store.store_root, prefix=".tmp-") as tmp:
            staging = Path(tmp) / "item"
            write_tree(staging, tree)
            summary = dump_nar(staging)
            path = source_store_path(summary.sha256, name, (), self.store.store_dir).path
            if path not in self.paths:
                staging.rename(self.store.real_path(path))
                self._pending(path, summary.sha256, summary.size, (), None)
            else:
                remove_read_only_tree(staging)
        return path

    def _add_text(
        self,
        name: str,
        text: bytes,
        references: tuple[str, ...],
        *,
        outputs: dict[str, str] | None = None,
    ) -> str:
        path = text_store_path(text, name, references, self.store.store_dir)
        self._write(path, Regular(text), references, deriver=None, outputs=outputs)
        return path

    def _write(
        self,
        path: str,
        tree: Node,
        references: tuple[str, ...],
        *,
        deriver: str | None,
        outputs: dict[str, str] | None = None,
    ) -> None:
        real = self.store.real_path(path)
        write_tree(real, tree)
        summary = dump_nar(real)
        self._pending(path, summary.sha256, summary.size, references, deriver, outputs)

    def _pending(
        self,
        path: str,
        nar_sha256: bytes,
        nar_size: int,
        references: tuple[str, ...],
        deriver: str | None,
        outputs: dict[str, str] | None = None,
    ) -> None:
        self.clock += self.rng.randint(1, 20)
        self.paths.add(path)
        self.pending.append(
            _Pending(path, nar_sha256, nar_size, references, deriver, self.clock, outputs)
        )

    def _register(self) -> None:
        """Register everything written, in order, as the daemon would after each build."""
        with open_for_writing(self.store.db_path) as conn:
            for p in self.pending:
                row_id = register_valid_path(
                    conn,
                    path=p.path,
                    nar_sha256=p.nar_sha256,
                    nar_size=p.nar_size,
                    registration_time=p.registration_time,
                    deriver=p.deriver,
                    references=p.references,
                )
                if p.outputs is not None:
                    register_derivation_outputs(conn, row_id, p.outputs)
                    self.store.derivation_outputs[p.path] = dict(p.outputs)
                self.store.items.append(
                    StoreItemInfo(
                        id=row_id,
                        path=p.path,
                        nar_sha256=p.nar_sha256,
                        nar_size=p.nar_size,
                        references=p.references,
                        deriver=p.deriver,
                        registration_time=p.registration_time,
                    )
                )
        self.pending.clear()


@dataclass(frozen=True, slots=True)
class _Pending:
    path: str
    nar_sha256: bytes
    nar_size: int
    references: tuple[str, ...]
    deriver: str | None
    registration_time: int
    outputs: dict[str, str] | None
