"""The README names only configs and config keys that exist, and every shipped config is named in it.

(Issue 20, item 7: the README's claims drifted from the code; these checks keep the names honest.)"""

import glob
import os
import re

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = open(os.path.join(REPO, "README.md"), encoding="utf-8").read()


def test_every_config_file_named_exists_and_every_shipped_config_is_named():
    named = set(re.findall(r"\bconfigs/([A-Za-z0-9_]+\.py)\b", README))
    shipped = {os.path.basename(p) for p in glob.glob(os.path.join(REPO, "configs", "*.py"))
               if not os.path.basename(p).startswith("_")}
    assert named - shipped == set(), f"README names configs that do not exist: {sorted(named - shipped)}"
    assert shipped - named == set(), f"shipped configs the README never names: {sorted(shipped - named)}"


def test_every_config_key_named_exists():
    from vicuna_jax.cli import config_keys
    from vicuna_jax.train.config import base_config

    keys = set(config_keys(base_config()))
    prefixes = {k.rsplit(".", i)[0] for k in keys for i in range(k.count(".") + 1)}
    used = set(re.findall(r"--config\.([A-Za-z_][A-Za-z0-9_.]*[A-Za-z0-9_])", README))
    allowed = {"key", "leraning_rate"}  # the usage placeholder and the documented typo example
    unknown = sorted(u for u in used - allowed if u not in keys and u not in prefixes)
    assert not unknown, f"README uses config keys that do not exist: {unknown}"


def test_the_readme_names_every_model_preset_and_override_field():
    from vicuna_jax.model.config import FIELD_HELP, PRESETS

    missing = [n for n in list(PRESETS) + list(FIELD_HELP) if f"`{n}`" not in README]
    tiny_named = re.search(r"(\d+) presets", README)
    assert not [m for m in missing if m.startswith("tiny") or m in FIELD_HELP], missing
    assert tiny_named and int(tiny_named.group(1)) == len(PRESETS), "the README's preset count is stale"
