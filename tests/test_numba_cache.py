"""The kernel cache is keyed on the whole package's source (gru_engine/numba_cache.py): a
kernel whose callees in other files changed must not load its old machine code."""
import importlib
import sys

from gru_engine import numba_cache
from gru_engine.numba_cache import _PackageStamped, package_stamp


def test_package_stamp_follows_every_source_file(tmp_path):
    (tmp_path / "a.py").write_text("x = 1\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.py").write_text("y = 2\n")
    (tmp_path / "__pycache__").mkdir()
    first = package_stamp(str(tmp_path))
    numba_cache._stamps.clear()
    (tmp_path / "__pycache__" / "c.py").write_text("ignored\n")
    (tmp_path / "notes.txt").write_text("not source\n")
    assert package_stamp(str(tmp_path)) == first
    numba_cache._stamps.clear()
    (tmp_path / "sub" / "b.py").write_text("y = 3\n")  # a callee's file changes
    assert package_stamp(str(tmp_path)) != first
    numba_cache._stamps.clear()


def test_package_kernels_use_the_package_stamp():
    from gru_engine.backends.cpu.trainer import train_steps
    from gru_engine.batching import schedule_start
    for kernel in (train_steps, schedule_start):
        locator = kernel._cache._impl.locator
        assert isinstance(locator, _PackageStamped)
        assert locator.get_source_stamp() == package_stamp()


def test_other_code_keeps_numbas_own_locators(tmp_path, monkeypatch):
    (tmp_path / "outside_kernel.py").write_text(
        "from numba import njit\n\n@njit(cache=True)\ndef twice(x):\n    return 2 * x\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module("outside_kernel")
    try:
        assert module.twice(2) == 4
        assert not isinstance(module.twice._cache._impl.locator, _PackageStamped)
    finally:
        sys.modules.pop("outside_kernel", None)


def test_install_is_idempotent():
    from numba.core import caching
    impl = getattr(caching, "CacheImpl", None) or caching._CacheImpl
    before = list(impl._locator_classes)
    numba_cache.install()
    assert impl._locator_classes == before
    assert sum(issubclass(c, _PackageStamped) for c in before) >= 2
