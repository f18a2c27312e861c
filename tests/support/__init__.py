"""Helpers for the tests and the benchmarks: real peers, the node as a subprocess, data generators.

    proc.py      running commands (the `dicomnode` CLI, DCMTK tools) and finding them
    node.py      the node as a subprocess: start on a free port, stop by PID
    peers.py     DCMTK storescp / dcmqrscp and Orthanc on free loopback ports
    postgres.py  a PostgreSQL server for a test: the configured one, the local one, or a throwaway cluster
    datagen.py   generated CT series and multi-frame objects; pydicom's own test files
    qrdata.py    a small archive with known attributes, for query/retrieve tests
    net.py       free ports, waiting for a listener
    wait.py      wait_for: the one polling loop
    toml.py      writing node.toml files

Nothing here is a fixture; tests/conftest.py holds those.
"""
