"""The one error-line helper: what the CLI, the sweep's store warning and model loading show for an error."""
import errno
import sqlite3

from compression_core.errors import MAX_LINE, error_line, shown


def test_a_multi_line_library_message_is_one_line():
    err = RuntimeError("Error(s) in loading:\n\tsize mismatch for fc.weight\n")
    assert error_line(err) == "Error(s) in loading:\\n\\tsize mismatch for fc.weight"
    assert error_line(err, first_line=True) == "Error(s) in loading:"
    assert error_line(sqlite3.OperationalError("attempt to write a readonly database"), first_line=True) == \
        "attempt to write a readonly database"


def test_an_os_error_names_its_path_shortened():
    path = "/tmp/" + "x" * 5000
    line = error_line(OSError(errno.ENAMETOOLONG, "File name too long", path))
    assert line.endswith(": File name too long") and "(5005 characters)" in line and len(line) < 200


def test_long_lines_keep_start_and_end_and_empty_messages_name_the_type():
    text = "bits must be " + "y" * 2000 + " allowed: 1-8"
    line = error_line(ValueError(text))
    assert len(line) == MAX_LINE + 3 and line.startswith("bits must be") and line.endswith("allowed: 1-8")
    assert error_line(KeyError()) == "KeyError" and error_line(ValueError("  \n "), first_line=True) == "ValueError"
    assert error_line("plain\ttext", limit=8) == "plai … text"


def test_shown_quotes_and_shortens_user_values():
    assert shown("a\nb") == "'a\\nb'"
    assert shown("x" * 100, limit=20) == "'xxxxxxxxx…xxxx' (100 characters)"
