"""Contact ids are data: every stored event, read-model row and outbound message carries
them. The same key, tenant and email must give the same id in every release, or existing
contacts would split in two. Fixed vectors, computed once, pin the derivation."""

from __future__ import annotations

from uuid import UUID

from services.domain.identity import ContactIdentity
from services.importing.rows import EventIds, import_event_id

KEY = bytes(range(32))


def test_contact_ids_are_fixed_for_a_key_tenant_and_email() -> None:
    identity = ContactIdentity(KEY)
    ana = UUID("0523b6c1-f93c-cec7-411a-f0ee953d2d33")
    assert identity.contact_id("acme", "ana@example.com") == ana
    # The contract's normalisation: trimmed and lowercased before hashing.
    assert identity.contact_id("acme", " Ana@Example.COM ") == ana
    # The tenant is part of it: the same person in another tenant is another contact.
    assert identity.contact_id("globex", "ana@example.com") == UUID(
        "f5eb1583-40ab-8fe0-7dd9-01bf00507aeb")
    assert identity.key_check() == "798733e64b8545c6"
    # Another key, other ids (and another check value).
    other = ContactIdentity(bytes(32))
    assert other.contact_id("acme", "ana@example.com") != ana
    assert other.key_check() != identity.key_check()


def test_the_id_cache_gives_what_the_hash_gives() -> None:
    cached = ContactIdentity(KEY)
    emails = [f"p{i}@example.com" for i in range(50)]
    first = [cached.contact_id("acme", e) for e in emails]
    assert [cached.contact_id("acme", e) for e in emails] == first  # from the cache
    assert [ContactIdentity(KEY).contact_id("acme", e) for e in emails] == first


def test_import_event_ids_are_fixed_for_a_file_row_and_kind() -> None:
    """Importing the same file again must publish the same ids (so nothing is applied
    twice), in any release."""
    key = "acme:abc:fp"
    assert import_event_id(key, 7, "contact_updated") == (
        "import-b921a677-f4a3-5d00-a589-4d3533189a9d")
    ids = EventIds(key)
    assert ids(7, "list_subscribed", "news") == "import-05e1c38d-def9-59e6-be31-576b32bc6280"
    # The fast path and the plain uuid5 agree on every kind of id.
    for line in (1, 2, 999_999):
        for kind, target in (("contact_updated", ""), ("consent_changed", "email"),
                             ("list_subscribed", "news")):
            assert ids(line, kind, target) == import_event_id(key, line, kind, target)
