"""Only what setup.cfg cannot say: the native data plane (relay/_pump.c), built on Linux where a C
compiler is present. It is optional: without a compiler the install still succeeds and the relay
uses its Python pump (the first log line and `relay status` say which one runs).

The library is loaded with ctypes, not imported, and uses no Python ABI: it is built as
relay/_pump.so (one file for every Python 3) and a wheel that carries it is tagged py3-none-<platform>
(scripts/release then makes that a manylinux tag). RELAY_PURE=1 builds without it: the pure-Python
wheel (py3-none-any) of a release."""
import os
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

try:
    from setuptools.command.bdist_wheel import bdist_wheel
except ImportError:                          # setuptools before 70.1
    from wheel.bdist_wheel import bdist_wheel


class BuildPump(build_ext):
    def get_ext_filename(self, fullname):
        return os.path.join(*fullname.split(".")) + ".so"


class NoPythonAbiWheel(bdist_wheel):
    def get_tag(self):
        python, abi, plat = super().get_tag()
        return (python, abi, plat) if self.root_is_pure else ("py3", "none", plat)


ext_modules = []
if sys.platform.startswith("linux") and os.environ.get("RELAY_PURE") != "1":
    # the build folder (a random temporary one when built from the sdist) kept out of the library,
    # so the same source builds the same bytes
    ext_modules.append(Extension("relay._pump", ["relay/_pump.c"], optional=True,
                                 extra_compile_args=["-O2", "-pthread", f"-ffile-prefix-map={os.getcwd()}=."],
                                 extra_link_args=["-pthread"]))
setup(ext_modules=ext_modules, cmdclass={"build_ext": BuildPump, "bdist_wheel": NoPythonAbiWheel})
