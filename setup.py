"""The one thing pyproject.toml cannot say: herald._shape, an optional C module.

It is the number check's prefilter at memory speed (herald/_shape.c says why). Where no
C compiler is found the build goes on without it, and Herald runs the same rule in
Python (codec._may_be_safe), about 15 times slower per byte of request body.
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("herald._shape", ["herald/_shape.c"], optional=True,
                             extra_compile_args=["-O2"])])
