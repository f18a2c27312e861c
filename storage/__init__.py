"""dicomnode.storage: the archive, free of any network protocol.

    archive/   where files live (layout.py owns every path), how they become durable,
               header parsing and the one ingest path
    index/     the SQL index: models, database, migrations, rows
    query/     the one matcher (C-FIND rules) and its SQL, used by every front end
    jobs.py    the durable queue of on-arrival work
    check.py   the index against the files

Installed as ``dicomnode.storage``; it never imports ``dicomnode.node``.
"""

if __name__ != "dicomnode.storage":  # e.g. `import storage` from the repository root
    raise ImportError(f"this folder is the package dicomnode.storage; import it under that name, not {__name__!r}")
