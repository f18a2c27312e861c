"""The one query matcher: matching.py (PS3.4 C.2.2.2 rules), sql.py (a query as one SELECT),
listing.py (`ls`, `show`, files by UID). C-FIND, the CLI and the web side all match here."""
