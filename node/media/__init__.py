"""Media and new objects: DICOMDIR file-sets out of and into the archive (dicomdir.py)."""
