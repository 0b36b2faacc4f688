"""Names as people see them: RFC 8266 nicknames and their confusable skeletons.

A name is shown as the PRECIS Nickname profile enforces it, case preserved:
other spaces become ASCII spaces, runs of them one space, and the whole NFKC
(a fullwidth ``B`` is ``B``). Two names are the same name when they compare equal,
case-insensitively; one passes for the other when their skeletons (Unicode
TS #39) match: ``alice`` with a Cyrillic ``a`` for ``alice``, ``Server``
with a Cyrillic ``S`` for ``Server``. :func:`name_keys` gives what a
registry keeps unique for both.

Strategy: the skeleton is built on the data of ``confusable-homoglyphs``,
which holds the links of Unicode's ``confusables.txt`` in both directions.
Each group of linked strings is a star, one prototype and the characters
confused with it, so mapping each member to one representative of its group
is the TS #39 mapping, whichever member represents it.
"""

from __future__ import annotations

import functools
import json
import unicodedata
from importlib.resources import files

from precis_i18n import get_profile

#: How names are shown: the Nickname profile, case preserved.
_SHOWN = get_profile("NicknameCasePreserved")
#: How names are compared: the Nickname profile, case mapped to lower case.
_COMPARED = get_profile("NicknameCaseMapped")
#: Marks that the data keeps from the comments of ``confusables.txt``, where
#: they only keep right-to-left characters in order.
_NOT_DATA = str.maketrans("", "", "\u200e\u200f")


def enforce(requested: str) -> str:
    """The name shown for ``requested``, by the Nickname profile.

    Raises:
        UnicodeEncodeError: for a character the profile refuses; its
            ``start`` is where.
    """
    return _SHOWN.enforce(requested)


def name_keys(name: str) -> frozenset[str]:
    """What a registry keeps unique for ``name``, an enforced name.

    The skeleton of the compared form catches names that are equal or look
    alike in lower case (``Alice`` for ``alice``, a Cyrillic ``s`` for an ``s``);
    the skeleton of the name as shown catches those that only look alike in
    their own case (``Ian`` for ``lan``). Only the profile's mapping rules
    are applied: a shortened variant (``names.name_variants``) need not pass
    its context rules to be compared.
    """
    return frozenset({skeleton(_COMPARED.apply_five_rules(name)), skeleton(name)})


def prepare() -> None:
    """Load the confusables data now (some 50 ms and 4 MB, once), so that
    the first client's handshake does not wait for it."""
    _prototypes()


def skeleton(text: str) -> str:
    """The TS #39 skeleton of ``text``: equal for strings that look alike.

    Step 2 of the algorithm, dropping default-ignorable characters, is left
    out: names and the separator, all that is compared, hold none.
    """
    prototypes = _prototypes()
    decomposed = unicodedata.normalize("NFD", text)
    mapped = "".join(prototypes.get(char, char) for char in decomposed)
    return unicodedata.normalize("NFD", mapped)


@functools.cache
def _prototypes() -> dict[str, str]:
    """Each confusable character mapped to the representative of its group.

    The representative is the group's one string of several characters
    (``rn`` for ``m``) where there is one, else its smallest character; its
    own characters are mapped in turn, so that a skeleton is a fixed point.
    """
    representatives = {
        member: _representative(group)
        for group in _groups()
        for member in group
        if len(member) == 1
    }
    return {
        char: "".join(representatives.get(part, part) for part in representative)
        for char, representative in representatives.items()
    }


def _representative(group: frozenset[str]) -> str:
    return min(group, key=lambda member: (len(member) == 1, member))


def _groups() -> list[frozenset[str]]:
    """The groups of confusable strings in the data, by union-find."""
    data = files("confusable_homoglyphs").joinpath("confusables.json")
    links: dict[str, list[dict[str, str]]] = json.loads(data.read_text("utf-8"))
    parent: dict[str, str] = {}

    def root(member: str) -> str:
        while parent.setdefault(member, member) != member:
            member = parent[member]
        return member

    for source, targets in links.items():
        for target in targets:
            one = root(source.translate(_NOT_DATA))
            parent[one] = root(target["c"].translate(_NOT_DATA))
    groups: dict[str, set[str]] = {}
    for member in parent:
        groups.setdefault(root(member), set()).add(member)
    return [frozenset(group) for group in groups.values()]
