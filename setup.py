"""Build of the optional native hot path (native/*.pyx); everything else is in pyproject.toml.

A missing Cython or compiler, or a failed compile, gives a pure build with a warning, never a
failed install (the uvloop/asyncpg habit). The build says which it made.
"""
import os
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_ext import build_ext

HERE = Path(__file__).parent


#: pure modules Cython compiles unchanged into their native twin (``proxy._speedups.<key>``);
#: native/*.pyx are hand-written twins (rules: a different algorithm, not a translation)
COMPILED_AS_IS = {"event": "proxy/scf/event.py"}


def native_extensions():
    # the same reading as proxy/_native.py: set, non-empty and not "0"
    if os.environ.get("PROXY_NO_NATIVE", "") not in ("", "0"):
        print("clbscf-proxy: pure build (PROXY_NO_NATIVE set)", file=sys.stderr)
        return []
    sources = {Path(p).stem: str(p.relative_to(HERE)) for p in (HERE / "native").glob("*.pyx")}
    sources.update(COMPILED_AS_IS)
    if not sources:
        print("clbscf-proxy: pure build (no native sources)", file=sys.stderr)
        return []
    try:
        from Cython.Build import cythonize
    except ImportError:
        print("clbscf-proxy: pure build (Cython not available)", file=sys.stderr)
        return []
    from setuptools import Extension

    exts = [
        Extension("proxy._speedups." + name, [src], extra_compile_args=["-O2"])
        for name, src in sorted(sources.items())
    ]
    return cythonize(exts, language_level=3, quiet=True)


class OptionalBuildExt(build_ext):
    """Compile what can be compiled; a failure leaves the pure-Python twins in charge."""

    def run(self):
        try:
            super().run()
        except Exception as exc:  # noqa: BLE001 - any build failure means a pure build
            print(f"clbscf-proxy: pure build (native build failed: {exc})", file=sys.stderr)
            return
        if self.extensions:
            print("clbscf-proxy: native build", file=sys.stderr)

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as exc:  # noqa: BLE001
            print(f"clbscf-proxy: native module {ext.name} not built: {exc}", file=sys.stderr)


setup(ext_modules=native_extensions(), cmdclass={"build_ext": OptionalBuildExt})
