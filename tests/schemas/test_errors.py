"""One error family: every class in its family, its exit code and whether it may pass, written once."""

import inspect
import re

import pytest

from flows.cli import main
from schemas import errors
from schemas.errors import FastsamError, exit_code_of, is_transient

FAMILIES = {
    errors.InvalidInputError: 2,
    errors.NothingToDoError: 3,
    errors.UnavailableError: 4,
    errors.BusyError: 5,
    errors.NotCommittedError: 6,
    errors.NotEmptyError: 7,
    errors.RunFailedError: 1,
}


def _classes():
    return [c for _, c in inspect.getmembers(errors, inspect.isclass) if issubclass(c, FastsamError)]


@pytest.mark.parametrize("cls", _classes(), ids=lambda c: c.__name__)
def test_every_error_is_in_one_family_and_drawn_in_the_docstring(cls):
    if cls is FastsamError:
        return
    families = [f for f in FAMILIES if issubclass(cls, f)]
    assert len(families) == 1, (cls, families)
    expected = 2 if cls is errors.ObjectNotFoundError else FAMILIES[families[0]]  # a path we were given
    assert exit_code_of(cls("x") if cls is not errors.ImageError else cls("decode_error", "x")) == expected
    assert re.search(rf"─ {cls.__name__}\b", errors.__doc__), f"{cls.__name__} is not drawn in the hierarchy"


@pytest.mark.parametrize(
    "error, transient",
    [
        (errors.StoreUnavailableError("x"), True),
        (errors.ReadDeadlineError("x"), True),
        (errors.StoreAccessError("x"), False),
        (errors.ShardError("s", errors.StoreUnavailableError("x")), True),
        (errors.ShardError("s", errors.TableError("x")), False),
        (errors.ShardError("s", OSError("x")), False),
        (ValueError("a bug"), False),
    ],
)
def test_transient_is_one_rule(error, transient):
    assert is_transient(error) is transient


def test_a_bug_is_exit_1_with_a_hint_not_bad_input(monkeypatch, capsys):
    import flows.commands.status

    def broken(args):
        raise KeyError("model")

    monkeypatch.setattr(flows.commands.status, "main", broken)
    assert main(["status", "r", "--output", "/nowhere"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "error: unexpected KeyError: 'model'; this is a bug in fastsam-label: run the command again with --debug for "
        "the traceback, and report it"
    ]
    with pytest.raises(KeyError):
        main(["--debug", "status", "r", "--output", "/nowhere"])
