"""Numba's on-disk kernel cache, keyed on the source of the whole package.

Numba caches each ``@njit(cache=True)`` function keyed on its own file only: a kernel that
calls functions of other modules (``train_steps`` links the step, loss and optimiser code of
five files) keeps running its old machine code after any of those files changes, e.g. after
an upgrade of gru_engine in place. :func:`install` (run by ``gru_engine/__init__.py`` before
any kernel module is imported) puts locators in front of Numba's that serve this package's
functions with the same cache folders as Numba's own (``NUMBA_CACHE_DIR``, ``__pycache__``
beside the module, or the user-wide cache) but with :func:`package_stamp`, a hash of every
``.py`` file of the package, as the source stamp: any source change recompiles every kernel.
"""
from __future__ import annotations

import hashlib
import os

PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
_stamps: dict = {}


def package_stamp(root: str = PACKAGE_DIR) -> str:
    """SHA-256 (hex) of the relative paths and contents of every ``.py`` file below ``root``
    (``__pycache__`` folders skipped), in sorted order; computed once per process and root."""
    if root not in _stamps:
        h = hashlib.sha256()
        for folder, subfolders, files in os.walk(root):
            subfolders[:] = sorted(d for d in subfolders if d != "__pycache__")
            for name in sorted(f for f in files if f.endswith(".py")):
                path = os.path.join(folder, name)
                h.update(os.path.relpath(path, root).encode() + b"\0")
                with open(path, "rb") as f:
                    h.update(f.read())
        _stamps[root] = h.hexdigest()
    return _stamps[root]


class _PackageStamped:
    """Locator mixin: only for this package's functions; their source stamp is the package's."""

    def get_source_stamp(self):
        return package_stamp()

    @classmethod
    def from_function(cls, py_func, py_file):
        if not os.path.abspath(py_file).startswith(PACKAGE_DIR + os.sep):
            return None
        return super().from_function(py_func, py_file)


def install() -> None:
    """Put the package-stamped locators first in Numba's locator list (once per process)."""
    from numba.core import caching
    impl = getattr(caching, "CacheImpl", None) or caching._CacheImpl  # public from Numba 0.6x
    if any(issubclass(c, _PackageStamped) for c in impl._locator_classes):
        return
    bases = [getattr(caching, name) for name in ("UserProvidedCacheLocator",
                                                 "InTreeCacheLocator", "UserWideCacheLocator")
             if hasattr(caching, name)]
    ours = [type(f"Package{b.__name__}", (_PackageStamped, b), {}) for b in bases]
    impl._locator_classes = ours + list(impl._locator_classes)
