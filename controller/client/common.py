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


def read_input(path: str) -> str:
    """A command's -f FILE: the file's text, or stdin for '-'; a CommandError naming the
    file when it cannot be read."""
    import sys
    if path == "-":
        return sys.stdin.read()
    try:
        with open(path) as f:
            return f.read()
    except OSError as e:
        raise CommandError(f"cannot read {path}: {e.strerror}") from None


def api_socket(args):
    """Where this command's requests go: the network API when a credential is given
    (--credential FILE, else $NVCTL_CREDENTIAL; --server URL picks the server), else
    the unix socket in the state directory."""
    path = getattr(args, "credential", None) or os.environ.get("NVCTL_CREDENTIAL")
    server = getattr(args, "server", None)
    if path:
        from controller.client.api import ApiClientError, load_credential
        try:
            return load_credential(path, server)
        except ApiClientError as e:
            raise CommandError(str(e)) from None
    if server:
        raise CommandError("--server needs a credential (--credential FILE or NVCTL_CREDENTIAL)")
    return os.path.join(state_dir_from(getattr(args, "state_dir", None)), "nvctl.sock")


def show(obj, as_json: bool) -> None:
    if as_json:
        print(json.dumps(obj, indent=2, sort_keys=True))
