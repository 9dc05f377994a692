"""What every command shares: where the API socket is, and printing for a person or --json."""
from __future__ import annotations

import json
import os

DEFAULT_STATE_DIR = "/var/lib/nvctl"


def state_dir_from(arg: str | None) -> str:
    """The state directory: --state-dir, else $NVCTL_STATE_DIR, else /var/lib/nvctl."""
    return os.path.abspath(arg or os.environ.get("NVCTL_STATE_DIR") or DEFAULT_STATE_DIR)


class CommandError(Exception):
    """A command's failure, said to the user as `nvctl: <message>` with exit code 1."""


def api_socket(args) -> str:
    return os.path.join(state_dir_from(args.state_dir), "nvctl.sock")


def show(obj, as_json: bool) -> None:
    if as_json:
        print(json.dumps(obj, indent=2, sort_keys=True))
