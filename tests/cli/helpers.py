"""Assertions shared by the CLI tests: every failure is one ``error:`` line on stderr, exit 1, no traceback."""

from __future__ import annotations


def stderr_of(result) -> str:
    # Click >= 8.2 (and Typer's bundled copy) capture stderr separately; older ones mix it into the output.
    try:
        return result.stderr
    except ValueError:  # pragma: no cover - old Click with mixed streams
        return result.output


def assert_one_line_error(result, *fragments: str) -> str:
    """Exit code 1, exactly one ``error:`` line containing every fragment, no traceback, stdout empty."""
    err = stderr_of(result)
    assert result.exit_code == 1, (result.exit_code, result.output, err)
    error_lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1, err
    assert "Traceback" not in result.output and "Traceback" not in err
    assert result.stdout == ""  # stdout stays clean for pipes
    for fragment in fragments:
        assert fragment in error_lines[0], error_lines[0]
    return error_lines[0]
