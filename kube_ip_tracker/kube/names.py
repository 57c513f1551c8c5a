"""Kubernetes name syntax checks (label keys and values, DNS names, port names)."""

from __future__ import annotations

import re

_NAME_PART = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_PORT_NAME_CHARS = re.compile(r"^[-a-z0-9]+$")
_HAS_LETTER = re.compile(r"[a-z]")


def qualified_name_problem(value: str) -> str | None:
    """Why ``value`` is not a valid label key (``[prefix/]name``), or None when it is."""
    prefix, slash, name = value.rpartition("/")
    if slash:
        if not prefix:
            return "prefix part must be non-empty"
        problem = dns1123_subdomain_problem(prefix)
        if problem is not None:
            return f"prefix part {problem}"
    if not name:
        return "name part must be non-empty"
    if len(name) > 63:
        return "name part must be no more than 63 characters"
    if not _NAME_PART.match(name):
        return (
            "name part must consist of alphanumeric characters, '-', '_' or '.', "
            "and must start and end with an alphanumeric character"
        )
    return None


def label_value_problem(value: str) -> str | None:
    """Why ``value`` is not a valid label value, or None when it is (the empty string is valid)."""
    if value == "":
        return None
    if len(value) > 63:
        return "must be no more than 63 characters"
    if not _NAME_PART.match(value):
        return (
            "a valid label value must be an empty string or consist of alphanumeric characters, "
            "'-', '_' or '.', and must start and end with an alphanumeric character"
        )
    return None


def dns1123_label_problem(value: str) -> str | None:
    """Why ``value`` is not an RFC 1123 label (namespace names), or None."""
    if len(value) > 63:
        return "must be no more than 63 characters"
    if not _DNS1123_LABEL.match(value):
        return "must be a lowercase RFC 1123 label (a-z, 0-9, '-', starting and ending alphanumeric)"
    return None


def dns1123_subdomain_problem(value: str) -> str | None:
    """Why ``value`` is not an RFC 1123 subdomain (object names, label prefixes), or None."""
    if len(value) > 253:
        return "must be no more than 253 characters"
    if not _DNS1123_SUBDOMAIN.match(value):
        return "must be a lowercase RFC 1123 subdomain (a-z, 0-9, '-', '.', starting and ending alphanumeric)"
    return None


def port_name_problem(value: str) -> str | None:
    """Why ``value`` is not a valid IANA service (port) name, or None."""
    if not value or len(value) > 15:
        return "must be 1 to 15 characters"
    if not _PORT_NAME_CHARS.match(value):
        return "must contain only lowercase alphanumeric characters and '-'"
    if not _HAS_LETTER.search(value):
        return "must contain at least one letter"
    if "--" in value:
        return "must not contain consecutive hyphens"
    if value.startswith("-") or value.endswith("-"):
        return "must not begin or end with a hyphen"
    return None
