"""PEP 517 backend: setuptools' own, plus the installing environment's site-packages on sys.path.

pip builds in an isolated environment that hides the installed torch; an extension built
against a different torch (pip would download the newest) fails to load. The isolated build
runs the same interpreter, whose sysconfig still names the real site-packages: append them
(after the isolated ones, so the isolated setuptools wins) and import torch from there.
"""
import sys
import sysconfig

for key in ("purelib", "platlib"):
    path = sysconfig.get_paths().get(key)
    if path and path not in sys.path:
        sys.path.append(path)

from setuptools.build_meta import *  # noqa: E402,F401,F403
from setuptools.build_meta import __all__  # noqa: E402,F401
