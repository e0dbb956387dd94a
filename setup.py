"""Only what setup.cfg cannot say: the native data plane (relay/_pump.c), built on Linux where a C
compiler is present. It is optional: without a compiler the install still succeeds and the relay
uses its Python pump (the first log line and `relay status` say which one runs)."""
import sys

from setuptools import Extension, setup

ext_modules = []
if sys.platform.startswith("linux"):
    # loaded with ctypes, not imported: no Python headers needed
    ext_modules.append(Extension("relay._pump", ["relay/_pump.c"], optional=True,
                                 extra_compile_args=["-O2", "-pthread"], extra_link_args=["-pthread"]))
setup(ext_modules=ext_modules)
