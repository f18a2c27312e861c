"""dicomnode.node: the front ends and the work.

    dimse/       the DICOM network side: AE, storage SCP, Q/R SCP, SCU, pynetdicom patches
    processing/  what is done with an object's pixels and header: analyze, display,
                 convert, anonymize
    pipeline/    the on-arrival worker and its actions
    cli/         the `dicomnode` command line
    settings.py, config.py   the settings and how they are loaded
    services.py  what several front ends share (opening the archive, ingesting, deleting)
    serve.py     running the node

Installed as ``dicomnode.node`` (the repository keeps it at the top level).
"""

if __name__ != "dicomnode.node":  # e.g. `import node` from the repository root
    raise ImportError(f"this folder is the package dicomnode.node; import it under that name, not {__name__!r}")
