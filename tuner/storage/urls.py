"""Storage URLs as users write them: masked for printing, and put into SQLAlchemy's form.

Users paste URLs in the forms libpq documents: a password in the user part or as a query
parameter, several hosts (``user@h1:5432,h2:5433/db``), a password with an unescaped ``@``.
SQLAlchemy's URL parser splits at the first ``@`` and reads ``h1:5432,h2:5433`` as one port,
so neither its masking nor its parsing holds for these: hence the small parser here.

What is masked: the password in the user part, and the value of every query parameter whose
name, once decoded as SQLAlchemy decodes it (``pass%77ord`` is ``password``), contains
``password``, ``secret`` or ``token`` (``password``, ``sslpassword``, …, in any case).
Paths to files that hold secrets (``sslkey``, ``passfile``) are shown: the file's permissions
protect it, and a user needs to see which file was meant.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import quote, unquote_plus

#: A query parameter: its name and value, up to the next ``&`` (as urllib's parse_qsl splits).
_PARAMETER = re.compile(r"(?<=[?&])(?P<name>[^=&]*)=[^&]*")
_SECRET_NAME = re.compile(r"password|secret|token", re.IGNORECASE)
MASK = "***"


def _mask_secret(parameter: re.Match[str]) -> str:
    # Decoded first: SQLAlchemy reads the name through parse_qsl, so an encoded name is the
    # same key to libpq.
    if _SECRET_NAME.search(unquote_plus(parameter["name"])):
        return f"{parameter['name']}={MASK}"
    return parameter[0]


def mask_url(url: str) -> str:
    """The URL with every password and secret parameter replaced by ``***``, safe to print,
    log and record. Fails safe: where the user part cannot be told from the rest (an ``@``
    in a query value), more is masked, never less."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url  # a bare path: a SQLite file, with no password to hide
    rest = _PARAMETER.sub(_mask_secret, rest)
    if rest.startswith("/") or "@" not in rest:
        return f"{scheme}://{rest}"  # no user part (sqlite:////path, host/db)
    # The last @ ends the user part: a password may hold an unescaped @, a host never does.
    userinfo, _, hosts = rest.rpartition("@")
    user, colon, _ = userinfo.partition(":")
    return f"{scheme}://{user}{colon and ':' + MASK}@{hosts}"


def sqlalchemy_url(url: str) -> str:
    """The URL in a form SQLAlchemy parses as libpq would: an unescaped ``@`` in the user
    part percent-encoded, and a PostgreSQL URL's host list (``h1:5432,h2:5433``) moved to
    ``host=`` query parameters, which SQLAlchemy's psycopg dialect hands to libpq (it tries
    each host in turn). Other URLs come back unchanged.

    The user part and hosts end at the first ``/`` or ``?``, so a password holding one of
    those must be percent-encoded, as for any URL parser; an ``@`` need not be.
    """
    scheme, sep, rest = url.partition("://")
    if not sep or rest.startswith("/"):
        return url
    head = re.split(r"[/?]", rest, maxsplit=1)[0]
    tail = rest[len(head) :]
    userinfo, at, hosts = head.rpartition("@")
    if "@" in userinfo:
        user, colon, password = userinfo.partition(":")
        userinfo = f"{quote(user, safe='')}{colon}{quote(password, safe='')}"
    if "," in hosts and scheme.startswith("postgres"):
        path, _, query = tail.partition("?")
        listed = "&".join(f"host={host}" for host in hosts.split(","))
        hosts, tail = "", f"{path or '/'}?{listed}{'&' + query if query else ''}"
    return f"{scheme}://{userinfo}{at}{hosts}{tail}"


def sqlite_file(url: str) -> Path | None:
    """The file a ``sqlite:///`` URL names, or None for another database (or in memory)."""
    from sqlalchemy.engine import make_url

    if not url.startswith("sqlite"):
        return None
    database = make_url(url).database
    return Path(database) if database and database != ":memory:" else None
