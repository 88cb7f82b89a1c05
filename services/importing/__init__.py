"""Importing contacts from CSV files as contract events (docs/import.md).

- ``mapping``: which column means what (header names, or a mapping file); pure.
- ``rows``: one CSV row → its contract events, validated by the decoder; event ids; pure.
- ``files``: reading the CSV (hash, encoding, delimiter, records), mapping files, and the
  rejects report.
- ``worker``: rows mapped in child processes for large files.
- ``importer``: the async import (``import_csv``) that publishes through JetStream.
"""
