"""Hypothesis explores new examples on developers' machines but replays a fixed set in CI
(CI=true), so a landing never depends on the luck of one run."""

import os

from hypothesis import settings

settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")
