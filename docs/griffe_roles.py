"""Griffe extension for the API reference: Sphinx roles in docstrings become code spans.

The docstrings refer to objects as ``:class:`Checkpoint```, ``:func:`check_overlap``` etc.
(the Sphinx convention); Markdown would print the role verbatim, so this turns each into
```Checkpoint``` before mkdocstrings renders the docstring. The docstrings stay as they are.
"""

from __future__ import annotations

import re

import griffe

_ROLE = re.compile(r":(?:py:)?(?:class|meth|func|data|attr|mod|exc|obj|const):`~?([^`]+)`")


class SphinxRoles(griffe.Extension):
    def on_object(self, *, obj: griffe.Object, **kwargs) -> None:  # noqa: ARG002 (griffe API)
        if obj.docstring is not None:
            obj.docstring.value = _ROLE.sub(r"`\1`", obj.docstring.value)
