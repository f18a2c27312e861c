"""config/node.toml documents every setting, in its section, with the built-in default."""

from __future__ import annotations

import tomllib
from dataclasses import fields

from dicomnode.node.config import Settings, load
from tests.support.proc import ROOT


def test_node_toml_documents_every_setting_with_its_default() -> None:
    data = tomllib.loads((ROOT / "config" / "node.toml").read_text())
    defaults = Settings()
    for f in fields(Settings):
        if f.name in ("rules", "remotes"):
            continue
        section = f.metadata["section"]
        assert f.name in data.get(section, {}), f"[{section}] {f.name} is not in config/node.toml"
        assert data[section][f.name] == getattr(defaults, f.name), f"{f.name}: node.toml and the default differ"
    s = load(ROOT / "config" / "node.toml")
    assert s.actions_for("X", "CT", "1.2") == ["analyze"]
