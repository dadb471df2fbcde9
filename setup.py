"""The one compiled part: p2pcache.guix._edwards25519 (see its C source for why it exists).

Everything else is declared in setup.cfg. The extension is optional: without a C compiler the
build goes on and signatures are verified through libsodium alone, about 2.5x slower.
"""

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


class OptionalBuildExt(build_ext):
    """Build the extension when a compiler is there; warn and go on when it is not."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as error:  # any compiler failure: no extension
            print(f"warning: p2pcache's C extension was not built ({error}); going on without")

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception as error:
            print(f"warning: {ext.name} was not built ({error}); going on without")


setup(
    ext_modules=[
        Extension(
            "p2pcache.guix._edwards25519",
            ["p2pcache/guix/_edwards25519.c"],
            extra_compile_args=["-O2", "-std=c11", "-Wall", "-Wextra", "-Wno-unused-parameter"],
        )
    ],
    cmdclass={"build_ext": OptionalBuildExt},
)
