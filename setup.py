"""Build script: the Cython ranking extension (OpenMP where the compiler has it) and the CUDA
sources in ``kernels/`` shipped inside the package as ``gru_engine.kernels``."""
import os
import subprocess
import sys
import tempfile

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup


def _openmp_flags():
    """Return (compile_args, link_args) for OpenMP, or empty lists when the compiler lacks it."""
    if os.environ.get("GRU_ENGINE_NO_OPENMP"):
        return [], []
    if sys.platform == "win32":
        return ["/openmp"], []
    cc = os.environ.get("CC", "cc")
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "omp.c")
        with open(src, "w") as f:
            f.write("#include <omp.h>\nint main(void){return omp_get_max_threads() < 1;}\n")
        try:
            ok = subprocess.run([cc, "-fopenmp", src, "-o", os.path.join(tmp, "omp")],
                                capture_output=True).returncode == 0
        except OSError:
            ok = False
    return (["-fopenmp"], ["-fopenmp"]) if ok else ([], [])


omp_compile, omp_link = _openmp_flags()
extensions = [
    Extension(
        "gru_engine._ranking",
        ["gru_engine/_ranking.pyx"],
        include_dirs=[np.get_include(), "gru_engine"],
        depends=["gru_engine/_scan.h", "gru_engine/_panels.h"],  # C kernels, in the sdist too
        extra_compile_args=["-O3"] + omp_compile if sys.platform != "win32" else omp_compile,
        extra_link_args=omp_link,
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
    )
]

setup(
    packages=["gru_engine", "gru_engine.backends", "gru_engine.backends.cpu",
              "gru_engine.backends.cuda", "gru_engine.serving", "gru_engine.sample_data",
              "gru_engine.kernels"],
    package_dir={"gru_engine.kernels": "kernels"},
    package_data={
        "gru_engine": ["spaces/*.json"],
        "gru_engine.sample_data": ["*.tsv.gz", "*.md"],
        "gru_engine.kernels": ["*.cu", "*.cuh", "emulation/*.h"],
    },
    ext_modules=cythonize(extensions, language_level=3,
                          compiler_directives={"boundscheck": False, "wraparound": False}),
    zip_safe=False,
)
