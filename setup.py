"""
Build imgateway with setuptools; C{setup.cfg} holds everything but this.

By default the build is pure Python. C{IMGATEWAY_COMPILE=1 pip install .}
also compiles the hottest modules (C{COMPILED_MODULES} in
C{imgateway/_compiled.py}) to C extensions with mypyc, which the interpreter
then loads in place of their source (C{docs/performance.md}, "The compiled
build"). Compiling needs mypy and mypy-zope (C{pyproject.toml}'s mypy
configuration names its plugin), the packages the modules' imports need for
their types (imgateway's own requirements) and a C compiler with the Python
headers. In pip's isolated build environment they are installed first; with
C{--no-build-isolation}, the environment must have them (a virtualenv with
imgateway's C{test} extra does).
"""

from __future__ import annotations

import configparser
import os
import runpy
import sys

from setuptools import setup

HERE = os.path.dirname(os.path.abspath(__file__))


def compileRequested() -> bool:
    """
    @return: Whether C{IMGATEWAY_COMPILE} asks for the compiled build (set,
        and neither empty nor C{0}, C{no} or C{false}).
    """
    return os.environ.get("IMGATEWAY_COMPILE", "").strip().lower() not in ("", "0", "no", "false")


def compileRequirements() -> list[str]:
    """
    @return: What compiling needs installed: mypy with the plugin its
        configuration names, and imgateway's own requirements (mypy reads the
        types of everything the compiled modules import).
    """
    config = configparser.ConfigParser()
    config.read(os.path.join(HERE, "setup.cfg"))
    required = config.get("options", "install_requires", fallback="")
    lines = [line.strip() for line in required.splitlines()]
    return ["mypy>=1.10", "mypy-zope>=1.0.5"] + [line for line in lines if line and not line.startswith("#")]


def compiledModules() -> list[str]:
    """
    @return: The paths of the modules to compile, read from
        C{imgateway/_compiled.py} without importing the package.
    """
    names = runpy.run_path(os.path.join(HERE, "imgateway", "_compiled.py"))
    return list(names["COMPILED_MODULES"])


if not compileRequested():
    setup()
else:
    try:
        from mypyc.build import mypycify
    except ImportError:
        if "setuptools.build_meta" in sys.modules and "egg_info" in sys.argv[1:]:
            # pip's isolated build asks setuptools' PEP 517 backend what to
            # install for the build: it runs "egg_info" and answers with
            # setup_requires (raising here), then runs this file again for
            # the build, with those installed.
            setup(setup_requires=compileRequirements())
        sys.exit(
            "IMGATEWAY_COMPILE is set but mypyc cannot be imported: install mypy and mypy-zope"
            " (or imgateway's test extra) into the build environment, or unset IMGATEWAY_COMPILE"
        )
    # mypy reads pyproject.toml's configuration (strict, the mypy-zope
    # plugin) from the current folder: pip runs this file in the tree.
    setup(ext_modules=mypycify(compiledModules(), opt_level="3"))
