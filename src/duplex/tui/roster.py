"""The list of conversations: contacts and anyone we have history with (no Textual)."""

from __future__ import annotations

import dataclasses

__all__ = ["Roster", "RosterEntry"]


@dataclasses.dataclass
class RosterEntry:
    """One row of the contact list.

    Attributes:
        name: the user.
        contact: on our contact list (else: only history with them).
        online: presence as the hub last said; None while unknown.
        unread: messages not read yet.
        mentions: how many of those mention us.
    """

    name: str
    contact: bool = False
    online: bool | None = None
    unread: int = 0
    mentions: int = 0


class Roster:
    """Contacts and conversations, ordered: contacts first, then by name."""

    def __init__(self) -> None:
        self._entries: dict[str, RosterEntry] = {}

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, name: str) -> RosterEntry:
        """Returns the entry of ``name``, made (not a contact) if new."""
        entry = self._entries.get(name)
        if entry is None:
            entry = self._entries[name] = RosterEntry(name)
        return entry

    def names(self) -> list[str]:
        """Every name, in display order."""
        return [entry.name for entry in self.entries()]

    def entries(self) -> list[RosterEntry]:
        """Every entry, in display order."""
        return sorted(self._entries.values(), key=lambda e: (not e.contact, e.name))

    def set_contacts(self, contacts: dict[str, bool]) -> None:
        """Replaces the contact list (name -> online) as the hub sent it."""
        for entry in self._entries.values():
            if entry.name not in contacts:
                entry.contact = False
                entry.online = None
        for name, online in contacts.items():
            entry = self.get(name)
            entry.contact = True
            entry.online = online

    def remove(self, name: str) -> None:
        """Takes ``name`` off the contact list; the conversation stays if it has unread."""
        entry = self._entries.get(name)
        if entry is None:
            return
        entry.contact = False
        entry.online = None

    def next_active(self, after: str | None) -> str | None:
        """Returns the next conversation with unread messages (mentions first), or None."""
        names = self.names()
        start = names.index(after) + 1 if after in names else 0
        order = names[start:] + names[:start]
        for wanted in ("mentions", "unread"):
            for name in order:
                if getattr(self._entries[name], wanted) > 0:
                    return name
        return None

    @property
    def total_unread(self) -> int:
        """Unread messages in every conversation."""
        return sum(entry.unread for entry in self._entries.values())
