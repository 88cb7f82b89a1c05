"""A bounded least-recently-used map of hot contacts, owned by one partition worker."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from uuid import UUID

from services.domain.contact import Contact


class ContactCache:
    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self._items: OrderedDict[UUID, Contact] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, contact_id: object) -> bool:
        return contact_id in self._items

    def get(self, contact_id: UUID) -> Contact | None:
        contact = self._items.get(contact_id)
        if contact is not None:
            self._items.move_to_end(contact_id)
        return contact

    def put(self, contact: Contact) -> None:
        self._items[contact.id] = contact
        self._items.move_to_end(contact.id)
        while len(self._items) > self.maxsize:
            self._items.popitem(last=False)

    def evict(self, contact_ids: Iterable[UUID]) -> None:
        for contact_id in contact_ids:
            self._items.pop(contact_id, None)

    def clear(self) -> None:
        self._items.clear()
