"""DICOM over TLS (issue 18, item 1), both ways, against DCMTK built with OpenSSL.

The node listens for TLS beside its plain port; DCMTK's echoscu, storescu and
findscu call it with +tls (with and without a client certificate, trusting or
not trusting its CA); the node calls DCMTK's storescp +tls as a configured
remote. Every certificate is made here (tests/support/certs.py)."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from tests.support.certs import Authority, Pair
from tests.support.datagen import write_ct_series
from tests.support.node import Node
from tests.support.peers import start_storescp
from tests.support.proc import cli as run_cli
from tests.support.proc import need, run
from tests.support.toml import remotes, write_toml


def _tls_args(pair: Pair | None, ca: Path) -> list[str]:
    """DCMTK's options: +tls KEY CERT (or +tla: no certificate of ours), trusting `ca`."""
    own = ["+tls", str(pair.key), str(pair.cert)] if pair else ["+tla"]
    return [*own, "+cf", str(ca)]


def _tls_node(make_node, tmp_path: Path, ca: Authority, **tls: object) -> Node:  # type: ignore[no-untyped-def]
    server = ca.issue("node")
    conf = {"tls": {"cert": str(server.cert), "key": str(server.key), "ca": str(ca.ca), "port": 0, **tls}}
    extra = {k: v for k, v in tls.items() if k == "remotes"}
    if extra:
        conf = {**conf, **extra}
        del conf["tls"]["remotes"]
    node: Node = make_node(start=False, extra=["--config", str(write_toml(tmp_path / "tls.toml", conf))])
    node.tls = True
    return node.start()


def _dcmtk(tool: str, node: Node, args: list[str], calling: str = "TLSSCU",
           *files: Path) -> tuple[int, str]:
    need(tool)
    p = run([tool, "-aet", calling, "-aec", node.aet, *args, "127.0.0.1", str(node.tls_port), *map(str, files)],
            timeout=120)
    return p.returncode, p.stdout + p.stderr


def test_dcmtk_calls_the_node_over_tls(make_node, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    ca = Authority(tmp_path / "pki")
    client = ca.issue("client", common="modality1")
    node = _tls_node(make_node, tmp_path, ca)
    assert node.port and node.tls_port and node.port != node.tls_port
    files = write_ct_series(tmp_path / "in", 3, rows=64, cols=64)

    # with a client certificate, and anonymously (no certificate: allowed unless require_client_cert)
    assert _dcmtk("echoscu", node, _tls_args(client, ca.ca))[0] == 0
    code, out = _dcmtk("storescu", node, _tls_args(client, ca.ca), "TLSSCU", *files)
    assert code == 0, out
    code, out = _dcmtk("findscu", node, [*_tls_args(None, ca.ca), "-S", "-k", "QueryRetrieveLevel=STUDY",
                                         "-k", "StudyInstanceUID", "-k", "PatientID"])
    assert code == 0 and "StudyInstanceUID" in out, out
    listed = node.cli("ls", "instances", "--json").stdout
    assert listed.count("SOPInstanceUID") == 3

    # a client that does not trust the node's CA stops; the node says why in one line
    other = Authority(tmp_path / "other", name="another CA")
    code, out = _dcmtk("echoscu", node, _tls_args(None, other.ca))
    assert code != 0
    # a plain client on the TLS port is refused with the reason, and the plain port still works
    code, _ = _dcmtk("echoscu", node, [])
    assert code != 0
    assert run(["echoscu", "-aec", node.aet, "127.0.0.1", str(node.port)]).returncode == 0
    time.sleep(0.5)
    log = node.log()
    assert "TLS connection from 127.0.0.1 refused: not TLS" in log, log[-3000:]
    assert "the other side does not trust our certificate's CA" in log
    assert "Traceback" not in log


def test_mutual_tls_and_certificates_tied_to_ae_titles(make_node, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    ca = Authority(tmp_path / "pki")
    modality = ca.issue("modality", common="modality1", names=("modality1.example",))
    stranger = ca.issue("stranger", common="someone-else", names=("someone-else.example",))
    other = Authority(tmp_path / "other", name="another CA").issue("forged", common="modality1",
                                                                   names=("modality1.example",))
    tied = remotes({"MOD1": ("MOD1", 104, ["store", "find"])})
    tied["MOD1"]["certificate"] = "modality1.example"
    node = _tls_node(make_node, tmp_path, ca, require_client_cert=True, remotes=tied)
    files = write_ct_series(tmp_path / "in", 1, rows=32, cols=32)

    assert _dcmtk("echoscu", node, _tls_args(stranger, ca.ca))[0] == 0  # any certificate of our CA
    assert _dcmtk("echoscu", node, _tls_args(None, ca.ca))[0] != 0  # none: refused
    assert _dcmtk("echoscu", node, _tls_args(other, ca.ca))[0] != 0  # another CA's: refused
    # MOD1 is tied to its certificate: the right one stores, another certificate or the plain port cannot
    code, out = _dcmtk("storescu", node, _tls_args(modality, ca.ca), "MOD1", *files)
    assert code == 0, out
    code, out = _dcmtk("storescu", node, _tls_args(stranger, ca.ca), "MOD1", *files)
    assert code != 0 and "Calling AE Title Not Recognized" in out, out
    plain = run(["storescu", "-aet", "MOD1", "-aec", node.aet, "127.0.0.1", str(node.port), *map(str, files)])
    assert plain.returncode != 0
    time.sleep(0.5)
    log = node.log()
    assert "the client presented no certificate" in log or "certificate required" in log.lower(), log[-3000:]
    assert "MOD1 presented someone-else" in log and "MOD1 must call over TLS" in log, log[-3000:]


def test_a_silent_tls_client_does_not_hold_others_out(make_node, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    ca = Authority(tmp_path / "pki")
    node = _tls_node(make_node, tmp_path, ca)
    idle = [socket.create_connection(("127.0.0.1", node.tls_port)) for _ in range(5)]  # connect, say nothing
    try:
        t0 = time.monotonic()
        code, out = _dcmtk("echoscu", node, _tls_args(None, ca.ca))
        assert code == 0, out
        assert time.monotonic() - t0 < 10  # the handshake waits in the idle connections' threads, not ours
    finally:
        for s in idle:
            s.close()


def _storescp_tls(tmp_path: Path, pair: Pair, ca: Path) -> object:
    return start_storescp(tmp_path / "received", extra=["+tls", str(pair.key), str(pair.cert), "+cf", str(ca)])


def test_the_node_calls_tls_remotes(make_node, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    ca = Authority(tmp_path / "pki")
    node_pair = ca.issue("node")
    peers = {
        "GOOD": ca.issue("good"),
        "EXPIRED": ca.issue("expired", expired=True),
        "WRONGHOST": ca.issue("wronghost", names=("pacs.example",)),
        "UNTRUSTED": Authority(tmp_path / "other", name="another CA").issue("untrusted"),
    }
    scps = {name: start_storescp(tmp_path / name, aet=name, extra=["+tls", str(p.key), str(p.cert), "+cf",
                                                                   str(ca.ca)]) for name, p in peers.items()}
    try:
        conf = {"tls": {"cert": str(node_pair.cert), "key": str(node_pair.key), "ca": str(ca.ca), "port": 0},
                "remotes": remotes({name: (name, scp.port, ["store"]) for name, scp in scps.items()})}
        for r in conf["remotes"].values():
            r["tls"] = True
        cfg = write_toml(tmp_path / "node.toml", conf)
        node = make_node(extra=["--config", str(cfg)], start=False)
        node.tls = True
        node.start()
        files = write_ct_series(tmp_path / "in", 2, rows=32, cols=32)
        node.cli("import", str(tmp_path / "in"))
        uid = node.cli("ls", "studies", "--json").stdout.split('"StudyInstanceUID": "')[1].split('"')[0]

        def cli(*args: str) -> tuple[int, str]:
            p = run_cli(*args, "--config", str(cfg), check=False)
            return p.returncode, p.stdout + p.stderr

        code, out = cli("echo", "GOOD")
        assert code == 0, out
        # a C-MOVE (asked for over plain DICOM) goes to its TLS destination over TLS
        moved = run(["movescu", "-aet", "MOVER", "-aec", node.aet, "-aem", "GOOD", "-S", "-k", "QueryRetrieveLevel=STUDY",
                     "-k", f"StudyInstanceUID={uid}", "127.0.0.1", str(node.port)], timeout=120)
        assert moved.returncode == 0, moved.stdout + moved.stderr
        assert len(list((tmp_path / "GOOD").glob("*"))) == len(files)
        p = node.cli("send", "GOOD", uid, "--config", str(cfg), check=False)
        assert p.returncode == 0 and "2 sent" in p.stdout + p.stderr, p.stdout + p.stderr
        for name, words in (("EXPIRED", "has expired"), ("WRONGHOST", "does not name the host"),
                            ("UNTRUSTED", "not signed by a trusted CA")):
            code, out = cli("echo", name)
            assert code == 4 and words in out and "Traceback" not in out, (name, out)
    finally:
        for scp in scps.values():
            scp.stop()  # type: ignore[attr-defined]


def test_tls_configuration_errors_are_one_line(tmp_path: Path) -> None:
    conf = write_toml(tmp_path / "bad.toml", {"tls": {"cert": str(tmp_path / "missing.crt"),
                                                      "key": str(tmp_path / "missing.key"), "port": 0}})
    p = run_cli("serve", "--config", str(conf), "--storage", str(tmp_path / "a"), "--port", "0", "--no-web",
                check=False)
    assert p.returncode == 2 and "missing.crt" in p.stderr and "Traceback" not in p.stderr, p.stderr
    conf = write_toml(tmp_path / "half.toml", {"tls": {"cert": "x.crt"}})
    p = run_cli("serve", "--config", str(conf), "--storage", str(tmp_path / "a"), check=False)
    assert p.returncode == 2 and "cert and key go together" in p.stderr


@pytest.mark.parametrize("version", ["1.3"])
def test_min_version_is_enforced(make_node, tmp_path: Path, version: str) -> None:  # type: ignore[no-untyped-def]
    import ssl

    ca = Authority(tmp_path / "pki")
    node = _tls_node(make_node, tmp_path, ca, min_version=version)
    ctx = ssl.create_default_context(cafile=str(ca.ca))
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    with pytest.raises(ssl.SSLError):
        with socket.create_connection(("127.0.0.1", node.tls_port), timeout=10) as raw:
            ctx.wrap_socket(raw, server_hostname="127.0.0.1")
    ctx = ssl.create_default_context(cafile=str(ca.ca))
    with socket.create_connection(("127.0.0.1", node.tls_port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            assert tls.version() == "TLSv1.3"
