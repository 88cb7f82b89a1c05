"""Settings from the environment: defaults, and one clear sentence for each bad value."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.config import ConfigError, load_settings

KEY = "00" * 32


def test_defaults_are_the_embedded_ones(tmp_path: Path) -> None:
    settings = load_settings({"FICHA_DATA_DIR": str(tmp_path), "FICHA_ID_KEY": KEY})
    assert settings.postgres is None
    assert settings.nats_url is None
    assert settings.duplicate_window_s == 0.1
    assert settings.partitions == 8


def test_settings_survive_the_round_trip_to_a_child_process(tmp_path: Path) -> None:
    env = {"FICHA_DATA_DIR": str(tmp_path), "FICHA_ID_KEY": KEY,
           "FICHA_DUPLICATE_WINDOW": "2.5", "FICHA_PARTITIONS": "3",
           "FICHA_METRICS_HOST": "0.0.0.0",
           "FICHA_DATABASE_URL": "postgresql://postgres@127.0.0.1:5432/test"}
    settings = load_settings(env)
    assert load_settings(settings.to_env()) == settings


@pytest.mark.parametrize(
    ("name", "value", "words"),
    [
        ("FICHA_DUPLICATE_WINDOW", "0.05", "at least 0.1 seconds"),
        ("FICHA_DUPLICATE_WINDOW", "soon", "number of seconds"),
        ("FICHA_PARTITIONS", "0", "at least 1"),
        ("FICHA_BATCH_SIZE", "many", "whole number"),
        ("FICHA_ID_KEY", "zz", "hex"),
        ("FICHA_DATABASE_SCHEMA", "a;drop", "letters, digits and _"),
    ],
)
def test_a_bad_value_is_refused_with_a_sentence_naming_it(
    tmp_path: Path, name: str, value: str, words: str
) -> None:
    env = {"FICHA_DATA_DIR": str(tmp_path), "FICHA_ID_KEY": KEY, name: value}
    with pytest.raises(ConfigError) as error:
        load_settings(env)
    assert name in str(error.value)
    assert words in str(error.value)
