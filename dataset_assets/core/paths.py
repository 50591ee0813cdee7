"""The one test for names from outside that become paths below a folder.

Tar and zip members, shard names in an index or an append journal, catalog component paths and
sample keys all end up joined to a folder. They share this test, so that none of them is laxer
than the others: a backslash counts as a separator and a drive letter as absolute, so that a
name safe here stays inside the folder on any reader of the same files.
"""

from __future__ import annotations


def escape_reason(name: str) -> str | None:
    """Why `name`, joined to a folder, could land outside it; None when it cannot."""
    if not name:
        return "empty names are not allowed"
    if name[0] in "/\\" or name[1:2] == ":":
        return "absolute paths are not allowed"
    if ".." in name.replace("\\", "/").split("/"):
        return "'..' would escape the folder"
    return None
