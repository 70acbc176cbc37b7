"""Build the compiled cores (cache policies, Zipf sampler); everything else is in pyproject.toml."""

from Cython.Build import cythonize
from setuptools import Extension, setup

_FLAGS = ["-O3"]

setup(
    ext_modules=cythonize(
        [
            Extension(
                "simulator._cache",
                ["simulator/_cache.pyx"],
                language="c++",
                extra_compile_args=_FLAGS,
            ),
            Extension("simulator._zipf", ["simulator/_zipf.pyx"], extra_compile_args=_FLAGS),
        ],
        compiler_directives={"language_level": "3", "boundscheck": False, "wraparound": False},
    ),
)
