"""dicomnode: a DICOM network node (a small PACS) that never loses an image.

The installed package has two layers, each a folder of the repository:

    dicomnode.storage   the archive, protocol-free: paths, durable writes, ingest,
                        the SQL index, the one query matcher, the job queue
    dicomnode.node      the front ends (DIMSE, CLI, and the web side to come) and
                        the work done on arrival (pipeline, processing)

`dicomnode.storage` never imports `dicomnode.node`.
"""

__version__ = "0.1.0"
