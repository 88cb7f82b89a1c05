"""ficha names its PostgreSQL connections after the command a process runs (PGAPPNAME)."""

from __future__ import annotations

import os

import pytest

from services.cli_common import name_connections


@pytest.fixture(autouse=True)
def restored_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever the tests set is undone (monkeypatch restores only what it recorded)."""
    for variable in ("PGAPPNAME", "FICHA_NAMED_PGAPPNAME"):
        monkeypatch.setenv(variable, "recorded")
        monkeypatch.delenv(variable)


@pytest.mark.parametrize(
    ("argv", "name"),
    [
        (["up"], "ficha up"),
        (["project", "--projection", "audience", "--metrics-port", "0"], "ficha project audience"),
        (["project", "--projection=contacts"], "ficha project contacts"),
        (["project"], "ficha project contacts"),
        (["projections", "replay", "audience", "--tenant", "acme"], "ficha projections replay"),
        (["contacts", "list", "--tenant", "acme"], "ficha contacts list"),
        (["--help"], "ficha"),
    ],
)
def test_each_command_names_its_connections(
    monkeypatch: pytest.MonkeyPatch, argv: list[str], name: str
) -> None:
    name_connections(argv)

    assert os.environ["PGAPPNAME"] == name


def test_a_child_names_itself_again_but_an_operators_name_is_kept(
    monkeypatch: pytest.MonkeyPatch,
) -> None:

    monkeypatch.setenv("PGAPPNAME", "crm-east")
    name_connections(["up"])
    assert os.environ["PGAPPNAME"] == "crm-east"

    monkeypatch.setenv("PGAPPNAME", "ficha up")  # inherited from `ficha up` by a projector
    monkeypatch.setenv("FICHA_NAMED_PGAPPNAME", "1")
    name_connections(["project", "--projection", "audience"])
    assert os.environ["PGAPPNAME"] == "ficha project audience"
