"""The DICOM network side: the AE (ae.py), its services (storage_scp.py, qr_scp.py), this node as a
client (scu.py, qr_scu.py), status codes (status.py) and the pynetdicom internals we rely on (patches.py)."""
