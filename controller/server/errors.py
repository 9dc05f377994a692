"""Errors the server answers with."""
from __future__ import annotations


class ApiError(Exception):
    """An error for the user: message plus optional (path, reason) list."""

    def __init__(self, message: str, errors: list | None = None):
        super().__init__(message)
        self.errors = errors or []


class Refused(ApiError):
    """A request the caller may not make, found out inside the operation (a policy layer
    another credential owns, controller.server.owners): answered as a permission
    refusal (`denied`, HTTP 403) and recorded in the audit trail as refused."""


def unknown_tenant(name) -> ApiError:
    """The one answer for a tenant that does not exist: a tenant credential asking about
    another tenant gets exactly this too (controller.server.access), so it must not vary."""
    return ApiError(f"no tenant {name!r}")


def unknown_host(name, hosts, arg: str | None = None) -> ApiError:
    """A host that is not registered, with the ones that are; `arg`: the argument that
    named it, for the field list."""
    return ApiError(f"no host {name!r} (hosts: {', '.join(sorted(hosts))})",
                    [(arg, "not registered")] if arg else None)
