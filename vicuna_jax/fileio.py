"""Small filesystem helpers shared by writers that must never leave half-written output."""

from __future__ import annotations

import os
import shutil


def replace_dir(tmp: str, final: str) -> None:
    """Moves a fully written `tmp` directory to `final`, replacing any existing one.

    The old directory is renamed aside before the new one is renamed in, so at every moment `final` is
    either the complete old or the complete new directory.
    """
    if os.path.exists(final):
        old = final + ".tmp-old"
        shutil.rmtree(old, ignore_errors=True)
        os.rename(final, old)
        os.rename(tmp, final)
        shutil.rmtree(old)
    else:
        os.rename(tmp, final)
