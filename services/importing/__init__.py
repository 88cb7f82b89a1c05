"""Importing contacts from CSV files as contract events (docs/import.md).

- ``mapping``: which column means what (header names, or a mapping file); pure.
- ``rows``: one CSV row → its contract events, validated by the decoder; pure.
- ``csvfile``: reading the file (hash, encoding, delimiter, records) and the rejects report.
- ``importer``: the async import (``import_csv``) that publishes through JetStream.
"""
