"""Error formatting from RFC 9457 problem documents."""

from __future__ import annotations

from meshd.ctl.errors import EXIT_FAILED, EXIT_NOT_FOUND, ServerError, format_problem

VALIDATION = {
    "type": "urn:meshd:problem:validation",
    "title": "Invalid resource",
    "status": 422,
    "detail": "2 problem(s); nothing was applied",
    "instance": "/v1/apply",
    "errors": [
        {
            "field": "spec.http[1].route",
            "message": "weights sum to 90; they must sum to 100",
            "resource": "VirtualService default/reviews",
        },
        {"field": "spec.subsets[0].name", "message": "required"},
    ],
}


def test_detail_then_one_line_per_field_error() -> None:
    assert format_problem(422, VALIDATION) == [
        "Error: 2 problem(s); nothing was applied",
        "  VirtualService default/reviews: spec.http[1].route: "
        "weights sum to 90; they must sum to 100",
        "  spec.subsets[0].name: required",
    ]


def test_hint_comes_last() -> None:
    lines = format_problem(403, {"detail": "token 'v' has role viewer"}, hint="ask an admin")
    assert lines == ["Error: token 'v' has role viewer", "Hint: ask an admin"]


def test_title_when_there_is_no_detail() -> None:
    assert format_problem(409, {"title": "Conflict"}) == ["Error: Conflict"]


def test_an_answer_that_is_not_a_problem_document() -> None:
    lines = format_problem(502, None, raw="<html>\n<h1>Bad   Gateway</h1></html>")
    assert lines == ["Error: the server answered HTTP 502: <html> <h1>Bad Gateway</h1></html>"]


def test_a_long_raw_answer_is_cut() -> None:
    (line,) = format_problem(500, None, raw="x" * 1000)
    assert line.endswith("...")
    assert len(line) < 400


def test_malformed_errors_are_skipped_not_fatal() -> None:
    problem = {"detail": "bad", "errors": ["not a mapping", {"message": "no field"}]}
    assert format_problem(400, problem) == ["Error: bad", "  no field"]


def test_server_error_exit_codes() -> None:
    assert ServerError(422, VALIDATION).exit_code == EXIT_FAILED
    assert (
        ServerError(404, {"detail": "VirtualService default/x does not exist"}).exit_code
        == EXIT_NOT_FOUND
    )
    assert ServerError(401, None).exit_code == EXIT_FAILED
    error = ServerError(422, VALIDATION)
    assert error.lines()[0] == "Error: 2 problem(s); nothing was applied"
    assert len(error.lines()) == 3
