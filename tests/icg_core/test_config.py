"""Configuration: YAML file, environment overrides, explicit options, and strictness."""

from __future__ import annotations

from pathlib import Path

import pydantic
import pytest

from icg_core.config import ICGConfig, load_config

REPO = Path(__file__).resolve().parents[2]


def test_embedded_yaml_equals_builtin_defaults() -> None:
    assert load_config(REPO / "configs" / "embedded.yaml", environ={}) == ICGConfig()


def test_cluster_example_is_a_valid_config() -> None:
    cfg = load_config(REPO / "configs" / "cluster.example.yaml", environ={})
    assert cfg.storage.root.startswith("s3://")


def test_precedence_file_then_env_then_option(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("world:\n  n_items: 10\n  seed: 1\nstorage:\n  root: /from/file\n")
    env = {"ICG__WORLD__SEED": "7", "ICG__STORAGE__S3_ENDPOINT_URL": "http://127.0.0.1:9000", "OTHER": "x"}
    cfg = load_config(path, environ=env)
    assert (cfg.world.n_items, cfg.world.seed) == (10, 7)
    assert cfg.storage.s3_endpoint_url == "http://127.0.0.1:9000"
    assert cfg.storage.root == "/from/file"
    assert load_config(path, root="s3://b/p", environ=env).storage.root == "s3://b/p"


def test_icg_config_env_selects_the_file(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("extract:\n  lookback_days: 3\n")
    assert load_config(environ={"ICG_CONFIG": str(path)}).extract.lookback_days == 3


def test_unknown_fields_and_bad_types_are_rejected(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("world:\n  n_itemz: 10\n")
    with pytest.raises(pydantic.ValidationError, match="n_itemz"):
        load_config(path, environ={})
    with pytest.raises(pydantic.ValidationError, match="n_items"):
        load_config(environ={"ICG__WORLD__N_ITEMS": "many"})
