"""config/node.toml documents every setting, in its section, with the built-in default."""

from __future__ import annotations

import tomllib
from dataclasses import fields

from dicomnode.node.config import Settings, load
from dicomnode.node.settings import toml_key
from tests.support.proc import ROOT


def test_node_toml_documents_every_setting_with_its_default() -> None:
    data = tomllib.loads((ROOT / "config" / "node.toml").read_text())
    defaults = Settings()
    for f in fields(Settings):
        if f.name in ("rules", "remotes"):
            continue
        section, key = f.metadata["section"], toml_key(f)
        assert key in data.get(section, {}), f"[{section}] {key} is not in config/node.toml"
        assert data[section][key] == getattr(defaults, f.name), f"{f.name}: node.toml and the default differ"
    s = load(ROOT / "config" / "node.toml")
    assert s.actions_for("X", "CT", "1.2") == ["analyze"]
