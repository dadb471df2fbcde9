"""What the generated store items contain: package names, sources, builder scripts, outputs.

Everything here is pure: a `random.Random` and the store paths in, file trees and text out.
The contents imitate a Guix store closely enough for a publisher to meet what it meets on a real
machine: scripts with store-path shebangs, shared libraries with store paths in their RPATH,
relative symlinks, symlinks into other store items, documentation, empty files and directories,
deep directories, debug outputs whose directory names carry another item's store path.

An item's references are exactly the store paths written into it, the way the daemon finds
them (by scanning the NAR for the hash parts of candidate paths); every builder here writes
every reference it is given somewhere in the tree.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from p2pcache.testing.file_tree import Directory, Filler, Node, Regular, Symlink, text_like

# Sizes of ordinary files: most store files are small.
SMALL_FILE_MAX = 48 << 10


@dataclass(frozen=True, slots=True)
class Package:
    """A package: name, version, and the outputs its derivation has."""

    name: str
    version: str
    outputs: tuple[str, ...] = ("out",)
    kind: str = "gnu"  # gnu | single-file | alias | empty

    @property
    def full_name(self) -> str:
        return f"{self.name}-{self.version}"

    @property
    def short(self) -> str:
        return self.name.split("-")[-1].replace("+", "p").replace(".", "")


# Real Guix package names, versions and outputs, so that the store reads like one.
CORE_PACKAGES = (
    Package("glibc", "2.41", ("out", "static", "debug")),
    Package("gcc", "14.3.0", ("out", "lib")),
    Package("binutils", "2.44"),
    Package("bash", "5.2.37", ("out", "doc", "include")),
    Package("coreutils", "9.1", ("out", "debug")),
    Package("zlib", "1.3.1", ("out", "static")),
    Package("xz", "5.4.5"),
    Package("bzip2", "1.0.8"),
    Package("gzip", "1.14"),
    Package("tar", "1.35"),
    Package("sed", "4.9"),
    Package("grep", "3.11"),
    Package("gawk", "5.3.0"),
    Package("findutils", "4.10.0"),
    Package("diffutils", "3.10"),
    Package("make", "4.4.1"),
    Package("ncurses", "6.2.20210619", ("out", "doc")),
    Package("readline", "8.2.13"),
    Package("gmp", "6.3.0"),
    Package("mpfr", "4.2.1"),
    Package("libffi", "3.4.6"),
    Package("openssl", "3.0.16", ("out", "doc")),
    Package("sqlite", "3.45.3"),
    Package("expat", "2.7.1"),
    Package("libxml2", "2.14.0", ("out", "static")),
    Package("util-linux", "2.40.4", ("out", "lib", "static")),
    Package("perl", "5.36.0"),
    Package("python", "3.11.11", ("out", "idle")),
    Package("guile", "3.0.9", ("out", "debug")),
    Package("pkg-config", "0.29.2"),
    Package("icu4c", "76.1"),
    Package("curl", "8.6.0", ("out", "doc")),
    Package("git", "2.49.0", ("out", "send-email", "subtree")),
    Package("glib", "2.83.3", ("out", "bin", "doc")),
    Package("hello", "2.12.2"),
    Package("nss-certs", "3.101.4"),
    Package("tzdata", "2025b"),
    Package("jq", "1.7.1"),
    Package("nano", "8.5"),
    Package("htop", "3.4.1"),
    Package("gtk+", "3.24.49", ("out", "bin", "doc")),
    Package("emacs", "30.1"),
    Package("ld-wrapper", "0", kind="single-file"),
    Package("guile-wrapper", "3.0.9", kind="alias"),
    Package("profile-empty", "0", kind="empty"),
)

_PREFIXES = ("python", "guile", "perl", "r", "ghc", "rust", "emacs", "go-github-com", "ocaml")
# fmt: off
_SYLLABLES = (
    "req", "uest", "lib", "xml", "json", "tls", "core", "fmt", "log", "ini", "yaml", "http",
    "dns", "url", "test", "mock", "zip", "term", "color", "path", "sock",
)
# fmt: on


def synthetic_package(rng: random.Random) -> Package:
    """A plausible language-library package (`python-yamlpath-1.4.2`); may repeat a name."""
    word = "".join(rng.sample(_SYLLABLES, k=rng.randint(1, 3)))
    version = ".".join(str(rng.randint(0, 30)) for _ in range(rng.randint(2, 3)))
    outputs = ("out", "doc") if rng.random() < 0.1 else ("out",)
    return Package(f"{rng.choice(_PREFIXES)}-{word}", version, outputs)


def source_item(rng: random.Random, package: Package) -> tuple[str, Node]:
    """A package's source as `add-to-store` would take it: a tarball or a checkout directory.

    Sources never refer to other store items.
    """
    if rng.random() < 0.75:
        # A compressed tarball: incompressible bytes.
        data = rng.randbytes(rng.randint(1 << 10, SMALL_FILE_MAX * 4))
        return f"{package.full_name}.tar.gz", Regular(data)
    files: dict[str, Node] = {
        "README": Regular(text_like(rng, rng.randint(200, 4000))),
        "configure": Regular(b"#! /bin/sh\n" + text_like(rng, rng.randint(500, 8000)), True),
        "Makefile.am": Regular(text_like(rng, rng.randint(100, 2000))),
        "src": Directory(
            {
                f"{package.short}{i}.c": Regular(text_like(rng, rng.randint(100, 12000)))
                for i in range(rng.randint(1, 6))
            }
        ),
        "doc": Directory({}),
        "NEWS": Symlink("README"),
        ".gitignore": Regular(b""),
    }
    return f"{package.full_name}-checkout", Directory(files)


def builder_script(package: Package, source: str, inputs: dict[str, str]) -> bytes:
    """The Scheme builder a gexp becomes (`<name>-builder`): it names its source and inputs."""
    input_lines = "\n".join(
        f'                     (cons "{label}" "{path}")' for label, path in sorted(inputs.items())
    )
    outputs = " ".join(f'(cons "{o}" (getenv "{o}"))' for o in package.outputs)
    return (
        "(begin\n"
        "  (use-modules (guix build gnu-build-system) (guix build utils))\n"
        f'  (gnu-build #:name "{package.full_name}"\n'
        f'             #:source "{source}"\n'
        '             #:system "x86_64-linux"\n'
        f"             #:outputs (list {outputs})\n"
        f"             #:inputs (list\n{input_lines})))\n"
    ).encode()


def _binary(rng: random.Random, size: int, strings: list[str]) -> bytes:
    """Bytes that look like an ELF file: a header, random code, and `strings` (the RPATH...)."""
    code = rng.randbytes(max(0, size - 64))
    table = b"\0".join(s.encode() for s in strings)
    return (
        b"\x7fELF\x02\x01\x01\0"
        + bytes(8)
        + code[: size // 2]
        + b"\0"
        + table
        + b"\0"
        + code[size // 2 :]
    )


def _small(rng: random.Random, low: int, high: int) -> int:
    """A file size skewed towards small ones."""
    return min(high, low + int(rng.expovariate(1 / ((high - low) / 6 + 1))))


def output_tree(
    rng: random.Random,
    package: Package,
    output: str,
    self_path: str,
    references: list[str],
    *,
    refers_to_itself: bool,
    large_file: int = 0,
    max_small: int = SMALL_FILE_MAX,
) -> Node:
    """The tree a build leaves in one output.

    `references` are the other store paths the output must mention (all of them will appear);
    `self_path` is mentioned only when `refers_to_itself`. `large_file` > 0 adds one file of
    that size. The first reference is the shell that scripts use.
    """
    shell = references[0] if references else "/bin/sh"
    rpath = ":".join([f"{r}/lib" for r in references] + ([f"{self_path}/lib"] * refers_to_itself))
    if package.kind == "single-file":
        lines = [f"#!{shell}", f"# {package.full_name}"]
        lines += [f'PATH="{r}/bin:$PATH"' for r in references[1:]]
        if refers_to_itself:
            lines.append(f'SELF="{self_path}"')
        return Regular(("\n".join(lines) + '\nexec "$@"\n').encode(), executable=True)
    if package.kind == "alias":
        # `references` is exactly the target; an alias never mentions itself.
        return Symlink(references[0]) if references else Symlink("nothing")
    if package.kind == "empty":
        return Directory({})
    short = package.short
    entries: dict[str, Node] = {}

    def put(path: str, node: Node) -> None:
        *dirs, leaf = path.split("/")
        target = entries
        for d in dirs:
            sub = target.setdefault(d, Directory({}))
            assert isinstance(sub, Directory)
            target = sub.entries  # type: ignore[assignment]
        target[leaf] = node

    doc = f"share/doc/{package.full_name}"
    put(f"{doc}/README", Regular(text_like(rng, _small(rng, 100, max_small))))
    if output in ("out", "bin", "idle", "send-email", "subtree"):
        prog = output if output not in ("out", "bin") else short
        script = [f"#!{shell}", f"# {package.full_name} ({output})"]
        if refers_to_itself:
            script.append(f'exec -a "$0" "{self_path}/libexec/.{prog}-real" "$@"')
        else:
            script.append('exec -a "$0" "$(dirname "$0")/../libexec/.' + prog + '-real" "$@"')
        put(f"bin/{prog}", Regular(("\n".join(script) + "\n").encode(), executable=True))
        put(
            f"libexec/.{prog}-real",
            Regular(_binary(rng, _small(rng, 512, max_small), [rpath]), executable=True),
        )
        if rng.random() < 0.4:
            put(f"bin/{prog}-{package.version}", Symlink(prog))
        put(f"share/info/{short}.info", Regular(text_like(rng, _small(rng, 50, max_small))))
        put(f"share/{short}/.keep", Regular(b""))
        if rng.random() < 0.5:
            put(f"share/{short}/templates", Directory({}))
        put(f"share/man/man1/{prog}.1", Regular(text_like(rng, _small(rng, 50, 4000))))
        lib = f"lib{short}.so"
        put(f"lib/{lib}.1.0", Regular(_binary(rng, _small(rng, 1024, max_small), [rpath])))
        put(f"lib/{lib}.1", Symlink(f"{lib}.1.0"))
        put(f"lib/{lib}", Symlink(f"{lib}.1"))
        if references and rng.random() < 0.3:
            put(f"lib/{short}/deps/{references[-1].rsplit('/', 1)[1]}", Symlink(references[-1]))
        if rng.random() < 0.2:
            put(f"share/{short}/a/b/c/d/e/deep.txt", Regular(text_like(rng, 300)))
    elif output in ("lib", "static", "include"):
        if output == "include":
            put(f"include/{short}.h", Regular(text_like(rng, _small(rng, 100, max_small))))
            put(f"lib/pkgconfig/{short}.pc", Regular(f"prefix={rpath}\n".encode()))
        else:
            ext = "a" if output == "static" else "so.1"
            put(f"lib/lib{short}.{ext}", Regular(_binary(rng, _small(rng, 1024, max_small), [])))
            la = f"libdir='{self_path if refers_to_itself else '@libdir@'}/lib'\n"
            la += "dependency_libs='" + " ".join(f"-L{r}/lib" for r in references) + "'\n"
            put(f"lib/lib{short}.la", Regular(la.encode()))
    elif output == "debug":
        # Debug files are named after the item they describe, so a debug output refers to
        # that item through its directory names.
        described = references[-1] if references else "/gnu/store/none"
        debug_dir = "lib/debug" + described
        put(
            f"{debug_dir}/bin/{short}.debug",
            Regular(_binary(rng, _small(rng, 1024, max_small), [])),
        )
        if len(references) > 1:
            put(f"{debug_dir}/.build-id", Regular(" ".join(references[:-1]).encode()))
        if refers_to_itself:
            put(f"{debug_dir}/.self", Regular(self_path.encode()))
    else:  # doc and anything else: documentation
        for i in range(rng.randint(1, 8)):
            put(f"{doc}/{short}-{i}.html", Regular(text_like(rng, _small(rng, 100, max_small))))
        if refers_to_itself:
            put(f"{doc}/index.html", Regular(f'<a href="{self_path}/{doc}/">'.encode()))
        if references:
            put(f"{doc}/see-also", Regular("\n".join(references).encode()))
    if large_file:
        where = "lib/debug" if output == "debug" else "lib"
        put(f"{where}/lib{short}-big.so.1", Regular(Filler(rng.getrandbits(64), large_file)))
    return Directory(entries)
