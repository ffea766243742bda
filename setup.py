"""Builds the Cython byte path (relay._fastpath and the modules beside it); everything else
is in pyproject.toml."""

from Cython.Build import cythonize
from setuptools import Extension, setup

extensions = [
    Extension(
        "relay._fastpath",
        ["relay/_fastpath.pyx"],
        extra_compile_args=["-O3"],
    ),
    Extension(
        "relay._exchanges",
        ["relay/_exchanges.pyx"],
        extra_compile_args=["-O3"],
    ),
    Extension(
        "relay._httpfront",
        ["relay/_httpfront.pyx"],
        extra_compile_args=["-O3"],
    ),
    Extension(
        "relay._tlslink",
        ["relay/_tlslink.pyx"],
        extra_compile_args=["-O3"],
        libraries=["dl"],
    ),
]

setup(
    ext_modules=cythonize(
        extensions,
        language_level=3,
        compiler_directives={
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "embedsignature": True,
        },
    )
)
