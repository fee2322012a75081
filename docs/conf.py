"""Sphinx configuration: ``nox -s docs`` builds the site into docs/_build/html.

The pages stay Markdown (MyST); the API reference is generated from the docstrings.  The build
runs with warnings as errors, so a broken link between pages or a bad docstring fails it.
"""

from __future__ import annotations

import trio_wshandler

project = "trio_wshandler"
author = "the trio_wshandler developers"
release = version = trio_wshandler.__version__
copyright = "2026, the trio_wshandler developers"

extensions = ["myst_parser", "sphinx.ext.autodoc", "sphinx.ext.napoleon", "sphinx.ext.viewcode"]
source_suffix = {".md": "markdown"}
exclude_patterns = ["_build"]
myst_heading_anchors = 4
myst_enable_extensions = ["colon_fence"]
html_theme = "furo"
html_title = "trio_wshandler"
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "show-inheritance": True}
# names the docstrings mention that have no page of their own here
nitpicky = False
suppress_warnings = ["myst.header"]
