"""Build of the optional native hot path (native/*.pyx); everything else is in pyproject.toml.

A missing Cython or compiler, or a failed compile, gives a pure build with a warning, never a
failed install (the uvloop/asyncpg habit), unless ``PROXY_REQUIRE_NATIVE`` asks for native:
then it fails the build, with the compiler's message. ``PROXY_NO_NATIVE`` (a pure build) wins
over it, as it does at run time. The build says which it made.

``native_sources()`` is the one table of what is compiled from what. Beside each extension it
builds, the build writes a manifest (``<extension stem>.sha256``: the SHA-256 of each source,
read before Cython saw it) that ``proxy/_native.py`` compares with the sources at run time, so
that an extension older than its sources is never used (see there). A module whose build fails
loses its manifest, so an older extension left behind counts as stale.
"""
import hashlib
import os
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_ext import build_ext

HERE = Path(__file__).parent

#: pure modules Cython compiles unchanged into their native twin (``proxy._speedups.<key>``);
#: native/*.pyx are hand-written twins (rules: a different algorithm, not a translation)
COMPILED_AS_IS = {"event": "proxy/scf/event.py"}
#: the manifest beside ``<stem>.so`` (proxy/_native.py reads it by the same name)
MANIFEST_SUFFIX = ".sha256"
#: the manifest's word for a source that did not exist at build time
ABSENT = "absent"


def _flag(name):
    # the same reading as proxy/_native.py: set, non-empty and not "0"
    return os.environ.get(name, "") not in ("", "0")


NO_NATIVE = _flag("PROXY_NO_NATIVE")
REQUIRE_NATIVE = _flag("PROXY_REQUIRE_NATIVE") and not NO_NATIVE


def native_sources():
    """module name -> its sources, relative to this directory: first what Cython compiles,
    then what it reads along (the ``.pxd`` of the same stem, which may not exist)."""
    compiled = {p.stem: p.relative_to(HERE).as_posix() for p in (HERE / "native").glob("*.pyx")}
    compiled.update(COMPILED_AS_IS)
    return {name: [src, src.rpartition(".")[0] + ".pxd"] for name, src in sorted(compiled.items())}


def manifest_text(name, sources):
    """The manifest of ``proxy._speedups.<name>``: one ``<sha256 or absent>  <path>`` a line."""
    lines = [f"# proxy._speedups.{name} was built from (checked by proxy/_native.py)"]
    for rel in sources:
        path = HERE / rel
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else ABSENT
        lines.append(f"{digest}  {rel}")
    return "\n".join(lines) + "\n"


def manifest_path(ext_path):
    """Where the manifest of the extension file ``ext_path`` goes: beside it, same stem."""
    return Path(os.path.splitext(ext_path)[0] + MANIFEST_SUFFIX)


#: extension name -> its manifest, read before Cython runs (an edit during the build then
#: makes the module stale instead of passing for fresh)
MANIFESTS = {}


def _pure(reason):
    if REQUIRE_NATIVE:
        raise SystemExit(f"clbscf-proxy: PROXY_REQUIRE_NATIVE is set but {reason}; install "
                         "Cython and a C compiler, or unset it for a pure build")
    print(f"clbscf-proxy: pure build ({reason})", file=sys.stderr)
    return []


def native_extensions():
    if NO_NATIVE:
        print("clbscf-proxy: pure build (PROXY_NO_NATIVE set)", file=sys.stderr)
        return []
    sources = native_sources()
    if not sources:
        return _pure("no native sources")
    try:
        from Cython.Build import cythonize
    except ImportError:
        return _pure("Cython not available")
    from setuptools import Extension

    exts = []
    for name, (src, *_) in sources.items():
        ext = Extension("proxy._speedups." + name, [src], extra_compile_args=["-O2"])
        MANIFESTS[ext.name] = manifest_text(name, sources[name])
        try:
            # force: regenerate every .c, never trust one by its timestamp (a checkout can
            # leave a .c newer than a source it was not made from), so the manifest is true
            exts += cythonize([ext], language_level=3, quiet=True, force=True)
        except Exception as exc:  # noqa: BLE001 - a Cython error: this module is not built
            if REQUIRE_NATIVE:
                raise
            ext.cython_error = exc  # build_extension reports it (and drops the old manifest)
            exts.append(ext)
    return exts


class OptionalBuildExt(build_ext):
    """Compile what can be compiled; a failure leaves the pure-Python twins in charge."""

    def run(self):
        try:
            super().run()
        except Exception as exc:  # noqa: BLE001 - any build failure means a pure build
            if REQUIRE_NATIVE:
                raise
            print(f"clbscf-proxy: pure build (native build failed: {exc})", file=sys.stderr)
            return
        if self.extensions:
            print("clbscf-proxy: native build", file=sys.stderr)

    def build_extension(self, ext):
        manifest = manifest_path(self.get_ext_fullpath(ext.name))
        # no manifest while it builds: an extension left from before, if this fails, is stale
        manifest.unlink(missing_ok=True)
        try:
            error = getattr(ext, "cython_error", None)
            if error is not None:
                raise error
            super().build_extension(ext)
        except Exception as exc:  # noqa: BLE001
            if REQUIRE_NATIVE:
                raise
            print(f"clbscf-proxy: native module {ext.name} not built: {exc}", file=sys.stderr)
            return
        manifest.write_text(MANIFESTS[ext.name])

    def copy_extensions_to_source(self):
        # an editable install builds in a temporary build_lib and copies each extension into
        # the source tree: its manifest goes along, and a module that failed to build has its
        # manifest there removed, so the extension left from an earlier build counts as stale
        build_py = self.get_finalized_command("build_py")
        for ext in self.extensions:
            fullname = self.get_ext_fullname(ext.name)
            filename = self.get_ext_filename(fullname)
            package_dir = build_py.get_package_dir(fullname.rpartition(".")[0])
            inplace = os.path.join(package_dir, os.path.basename(filename))
            built = os.path.join(self.build_lib, filename)
            manifest_path(inplace).unlink(missing_ok=True)
            if os.path.exists(built) and manifest_path(built).exists():
                self.copy_file(built, inplace, level=self.verbose)
                self.copy_file(str(manifest_path(built)), str(manifest_path(inplace)),
                               level=self.verbose)

    def get_outputs(self):
        return super().get_outputs() + [str(manifest_path(p)) for p in super().get_outputs()]


setup(ext_modules=native_extensions(), cmdclass={"build_ext": OptionalBuildExt})
