"""Email address syntax, checked after the contract's normalisation (trim, lowercase)."""

from __future__ import annotations

import re

_LOCAL = re.compile(r"^[a-z0-9!#$%&'*+/=?^_`{|}~-]+(\.[a-z0-9!#$%&'*+/=?^_`{|}~-]+)*$")
_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_TLD = re.compile(r"^[a-z]{2,63}$|^xn--[a-z0-9-]{1,59}$")


def normalise_email(raw: str) -> str:
    return raw.strip().lower()


def email_problem(email: str) -> str | None:
    """Why a normalised address is not valid, or None when it is."""
    if len(email) > 254:
        return "is longer than 254 characters"
    if email.count("@") != 1:
        return "must contain exactly one @"
    local, domain = email.split("@")
    if not local:
        return "has nothing before the @"
    if len(local) > 64:
        return "has more than 64 characters before the @"
    if not _LOCAL.match(local):
        return "has a character or dot placement not allowed before the @"
    labels = domain.split(".")
    if len(labels) < 2:
        return "needs a domain with a dot after the @ (like example.com)"
    for label in labels[:-1]:
        if not _LABEL.match(label):
            return f"has an invalid domain part {label!r}"
    if not _TLD.match(labels[-1]):
        return f"ends in {labels[-1]!r}, which is not a top-level domain"
    return None
