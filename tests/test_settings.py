"""Settings tables (supervisor/settings.py): each reader's checks, defaults,
dotted paths in errors, and unknown keys. Pure: plain dicts, no files."""

from __future__ import annotations

import pytest

from caxton.supervisor.settings import ConfigError, Table


def error_of(read) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        read()
    return info.value


# ------------------------------------------------------------ errors and paths


def test_error_names_the_full_dotted_path():
    outer = Table({"sandbox": {"inner": {"n": "x"}}}, "top")
    inner = outer.table("sandbox").table("inner")
    error = error_of(lambda: inner.integer("n", 0))
    assert str(error) == "top.sandbox.inner.n: expected an integer, got 'x'"
    assert (error.field, error.problem) == ("top.sandbox.inner.n", "expected an integer, got 'x'")


def test_a_document_table_has_no_prefix():
    assert str(error_of(lambda: Table({"n": "x"}).integer("n", 0))) == "n: expected an integer, got 'x'"


def test_keys_toml_would_quote_are_quoted_in_the_path():
    table = Table({"my policy": {"n": True}, "": {}}, "policies")
    assert error_of(lambda: table.table("my policy").integer("n", 0)).field == 'policies."my policy".n'
    assert table.table("").path == 'policies.""'


def test_error_builds_an_error_for_a_key():
    error = Table({}, "limits").error("memory", "too big")
    assert isinstance(error, ValueError)
    assert str(error) == "limits.memory: too big"


def test_config_error_without_a_field_is_just_the_problem():
    assert str(ConfigError("", "cannot read config x")) == "cannot read config x"


# ------------------------------------------------------------ defaults


@pytest.mark.parametrize(
    "read",
    [
        lambda t: t.integer("k", "dflt"),
        lambda t: t.number("k", "dflt"),
        lambda t: t.size("k", "dflt"),
        lambda t: t.string("k", "dflt"),
        lambda t: t.choice("k", "dflt", ("a",)),
        lambda t: t.flag("k", "dflt"),
        lambda t: t.strings("k", "dflt"),
    ],
)
def test_an_absent_key_gives_the_default_unchecked(read):
    # The default comes from code: it is returned as is, whatever its type.
    assert read(Table({})) == "dflt"


# ------------------------------------------------------------ integer


def test_integer_accepts_integers_at_or_above_the_minimum():
    table = Table({"a": 0, "b": 7, "c": -3})
    assert table.integer("a", 1, minimum=0) == 0
    assert table.integer("b", 1, minimum=7) == 7
    assert table.integer("c", 1) == -3  # no minimum, no bound


@pytest.mark.parametrize("value", [True, False, 1.0, 1.5, "1", None, [1]])
def test_integer_rejects_non_integers(value):
    error = error_of(lambda: Table({"n": value}, "t").integer("n", 0))
    assert str(error) == f"t.n: expected an integer, got {value!r}"


def test_integer_below_the_minimum_names_the_bound():
    error = error_of(lambda: Table({"n": 0}, "t").integer("n", 5, minimum=1))
    assert str(error) == "t.n: expected an integer >= 1, got 0"


# ------------------------------------------------------------ number


def test_number_gives_floats_and_takes_toml_integers():
    value = Table({"x": 60}).number("x", 1.0)
    assert value == 60.0 and isinstance(value, float)
    assert Table({"x": 0.25}).number("x", 1.0, minimum=0) == 0.25


@pytest.mark.parametrize("value", [True, False, "1.0", None, [1.0]])
def test_number_rejects_non_numbers(value):
    assert str(error_of(lambda: Table({"x": value}).number("x", 1.0))) == f"x: expected a number, got {value!r}"


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_number_rejects_nan_and_infinities(value):
    # NaN compares false to every bound, so it must be caught on its own.
    error = error_of(lambda: Table({"x": value}).number("x", 1.0, minimum=0))
    assert str(error) == f"x: expected a finite number, got {value!r}"


def test_number_minimum_is_inclusive_and_above_is_exclusive():
    table = Table({"zero": 0, "neg": -0.5})
    assert table.number("zero", 1.0, minimum=0) == 0.0
    assert str(error_of(lambda: table.number("zero", 1.0, above=0))) == "zero: expected a number > 0, got 0"
    assert str(error_of(lambda: table.number("neg", 1.0, minimum=0))) == "neg: expected a number >= 0, got -0.5"


# ------------------------------------------------------------ size


def test_size_takes_integers_and_unit_strings():
    table = Table({"a": 4096, "b": "64MiB", "c": "10MB"})
    assert (table.size("a", 0), table.size("b", 0), table.size("c", 0)) == (4096, 64 << 20, 10_000_000)


@pytest.mark.parametrize("value", ["lots", -1, 1.5, True, "1.5MB"])
def test_size_rejects_what_parse_size_rejects(value):
    assert error_of(lambda: Table({"m": value}, "limits").size("m", 1)).field == "limits.m"


def test_size_below_the_minimum():
    assert Table({"m": 0}).size("m", 1) == 0
    assert str(error_of(lambda: Table({"m": 0}).size("m", 1, minimum=1))) == "m: expected a size >= 1, got 0"


# ------------------------------------------------------------ string, choice, flag


def test_string():
    assert Table({"s": ""}).string("s", "x") == ""
    assert str(error_of(lambda: Table({"s": 5}).string("s", "x"))) == "s: expected a string, got 5"


def test_choice_takes_one_of_the_options():
    assert Table({"c": "off"}).choice("c", "auto", ("auto", "off")) == "off"


@pytest.mark.parametrize("value", ["Off", 1, ["off"]])
def test_choice_lists_the_options_in_order(value):
    error = error_of(lambda: Table({"c": value}).choice("c", "auto", ("auto", "off")))
    assert str(error) == f"c: expected one of 'auto', 'off', got {value!r}"


@pytest.mark.parametrize("value", [0, 1, "true", "yes", None])
def test_flag_takes_only_booleans(value):
    assert Table({"f": False}).flag("f", True) is False
    assert str(error_of(lambda: Table({"f": value}).flag("f", True))) == f"f: expected true or false, got {value!r}"


# ------------------------------------------------------------ strings


def test_strings_gives_the_list():
    assert Table({"l": ["a", "b"], "e": []}).strings("l", []) == ["a", "b"]
    assert Table({"e": []}).strings("e", ["x"]) == []


@pytest.mark.parametrize("value", ["a", ["a", 1], [["a"]], {"a": 1}])
def test_strings_rejects_anything_but_a_list_of_strings(value):
    error = error_of(lambda: Table({"l": value}).strings("l", []))
    assert str(error) == f"l: expected a list of strings, got {value!r}"


def test_strings_with_options_names_the_unknown_items():
    table = Table({"l": ["a", "zz", "yy"]}, "p")
    assert Table({"l": ["a"]}).strings("l", [], options={"a", "b"}) == ["a"]
    error = error_of(lambda: table.strings("l", [], options={"a", "b"}))
    assert str(error) == "p.l: unknown 'yy', 'zz'; expected some of a, b"


# ------------------------------------------------------------ sub-tables


def test_an_absent_sub_table_reads_as_empty():
    sub = Table({}, "top").table("limits")
    assert sub.path == "top.limits"
    assert sub.integer("n", 3) == 3
    sub.finish()


@pytest.mark.parametrize("value", [5, "x", ["a"]])
def test_a_sub_table_must_be_a_table(value):
    error = error_of(lambda: Table({"limits": value}).table("limits"))
    assert str(error) == f"limits: expected a table, got {value!r}"


def test_a_table_of_named_tables_iterates_its_names():
    table = Table({"a": {}, "b": {"x": 1}})
    assert list(table) == ["a", "b"]
    assert "a" in table and "c" not in table


# ------------------------------------------------------------ unknown keys


def test_finish_passes_when_every_key_was_read():
    table = Table({"a": 1, "b": {}})
    table.integer("a", 0)
    table.table("b")
    table.finish()


def test_finish_names_every_unread_key_by_its_path():
    table = Table({"listen": "x", "lisen": "y", "zzz": 1}, "top")
    table.string("listen", "")
    error = error_of(table.finish)
    assert str(error) == "top.lisen, top.zzz: unknown settings"


def test_finish_with_one_unknown_key_names_it_as_the_field():
    error = error_of(Table({"colour": "blue"}).finish)
    assert (error.field, error.problem) == ("colour", "unknown setting")

