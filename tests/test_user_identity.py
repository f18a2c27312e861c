"""DICOM User Identity Negotiation (issue 18, item 2) with DCMTK's storescu/findscu as the requestor:
user name and passcode, JSON Web Tokens, require_user_identity, rights per user, positive responses."""

from __future__ import annotations

import time
from pathlib import Path

import jwt

from dicomnode.node.identity import hash_password
from tests.support.datagen import write_ct_series
from tests.support.node import Node
from tests.support.proc import need, run
from tests.support.toml import write_toml

SECRET = "a shared secret of thirty-two bytes!"


def _node(make_node, tmp_path: Path, **security: object) -> Node:  # type: ignore[no-untyped-def]
    conf = {"security": {"users": [f"alice:{hash_password('wonderland')}", f"bob:{hash_password('builder')}"],
                         "user_services": ["bob=find"], "open_services": ["find"], **security},
            "web": {"jwt_secret": SECRET}}
    return make_node(extra=["--config", str(write_toml(tmp_path / "users.toml", conf))])  # type: ignore[no-any-return]


def _store(node: Node, files: list[Path], *identity: str) -> tuple[int, str]:
    need("storescu")
    p = run(["storescu", "-aet", "MODALITY", "-aec", node.aet, *identity, "127.0.0.1", str(node.port),
             *map(str, files)], timeout=120)
    return p.returncode, p.stdout + p.stderr


def _token(tmp_path: Path, sub: str, seconds: float = 600, secret: str = SECRET) -> str:
    path = tmp_path / f"{sub}-{seconds}.jwt"
    path.write_text(jwt.encode({"sub": sub, "exp": int(time.time() + seconds)}, secret, algorithm="HS256"))
    return str(path)


def test_passcodes_tokens_and_rights_per_user(make_node, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    node = _node(make_node, tmp_path)
    files = write_ct_series(tmp_path / "in", 1, rows=32, cols=32)
    # open_services = find: without identity, MODALITY may not store (0x0124 names who)
    code, out = _store(node, files)
    assert node.cli("ls", "instances", "--json").stdout.count("SOPInstanceUID") == 0
    # alice (not in user_services) has MODALITY's rights too; bob is limited to find
    code, out = _store(node, files, "--user", "bob", "--password", "builder", "--pos-response")
    assert node.cli("ls", "instances", "--json").stdout.count("SOPInstanceUID") == 0
    assert "(user bob) refused: not allowed the store service" in node.log()
    # a wrong passcode and a token signed with another key are rejected at association
    code, out = _store(node, files, "--user", "alice", "--password", "queen")
    assert code != 0 and "Association Rejected" in out, out
    code, out = _store(node, files, "--jwt", _token(tmp_path, "carol", secret="another secret of 32 bytes!!!!!"))
    assert code != 0 and "Association Rejected" in out, out
    code, out = _store(node, files, "--jwt", _token(tmp_path, "carol", seconds=-60))
    assert code != 0, out
    log = node.log()
    assert "user 'alice': unknown user or wrong passcode" in log
    assert "token refused: Signature verification failed" in log and "Signature has expired" in log
    # a positive response when asked for one (storescu fails with --pos-response without it)
    code, out = _store(node, files, "--user", "bob", "--password", "builder", "--pos-response", "-d")
    answer = out[out.index("A-ASSOCIATE-AC"):] if "A-ASSOCIATE-AC" in out else out
    assert "User Identity Negotiation" in answer or "Server Response" in answer, out[-3000:]


def test_user_services_grant_what_the_ae_title_may_not(make_node, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    node = _node(make_node, tmp_path, user_services=["bob=find", "alice=store,find"])
    files = write_ct_series(tmp_path / "in", 2, rows=32, cols=32)
    code, out = _store(node, files, "--user", "alice", "--password", "wonderland")
    assert code == 0, out
    assert node.cli("ls", "instances", "--json").stdout.count("SOPInstanceUID") == 2
    code, out = _store(node, files, "--jwt", _token(tmp_path, "alice"))  # the same user by token
    assert code == 0, out
    assert "(user alice)" in node.log()


def test_require_user_identity(make_node, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    node = _node(make_node, tmp_path, require_user_identity=True, user_services=["alice=store"])
    files = write_ct_series(tmp_path / "in", 1, rows=32, cols=32)
    code, out = _store(node, files)
    assert code != 0 and "Association Rejected" in out, out
    code, out = _store(node, files, "--user", "alice")  # a user name alone proves nothing
    assert code != 0, out
    code, out = _store(node, files, "--user", "alice", "--password", "wonderland")
    assert code == 0, out
    log = node.log()
    assert "no user identity (require_user_identity)" in log
    assert "user identity of type 1 cannot be verified here" in log
