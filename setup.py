"""The optional C extension (the compiled unmask, ``trio_wshandler/_speedups.c``); everything
else is in pyproject.toml.  ``optional=True``: without a C compiler the build goes on, and the
package unmasks in pure Python (``trio_wshandler/_unmask.py``)."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension("trio_wshandler._speedups", ["trio_wshandler/_speedups.c"], optional=True)
    ]
)
