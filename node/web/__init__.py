"""The HTTP side: DICOMweb (QIDO-RS, WADO-RS, STOW-RS) on Starlette/uvicorn, in a process of its own."""
