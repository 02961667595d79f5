"""Name the Metaflow user before Metaflow is imported, so a flow file runs as the README writes it.

Metaflow reads the user from METAFLOW_USER, SUDO_USER, USERNAME or USER (when its config module
is imported) and refuses 'root': in a container or under cron, where those are unset or root,
`python <flow>.py run` stops with "Unknown user". The rule is segue tune's (user_name).
"""

from __future__ import annotations

import os


def name_metaflow_user() -> str:
    """Set METAFLOW_USER (to itself when already a usable name); call before importing metaflow."""
    from segue.tuning.launch import user_name  # imports no Metaflow (it reads settings on import)

    os.environ["METAFLOW_USER"] = user = user_name()
    return user
