"""Transitional alias of capalign.cli.ui for the capalign/train/ modules not yet converted to
capalign.reporting (tests/test_layout.py lists them); removed when none imports it."""

import sys

from capalign.cli import ui as _ui

sys.modules[__name__] = _ui  # one module under both names, so what a test patches on either is seen by both
