"""Reading ``-f``: files, directories, stdin, mixed; local errors name the file."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import yaml

from meshd.ctl.errors import EXIT_USAGE, UsageError
from meshd.ctl.sources import check_namespace, read_documents, yaml_body
from tests.ctl.bookinfo import REVIEWS_DESTINATION_RULE, REVIEWS_VIRTUAL_SERVICE


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def kinds(paths: list[str], **kw: object) -> list[tuple[str, str, int]]:
    docs = read_documents(paths, **kw)  # type: ignore[arg-type]
    return [(d.kind, Path(d.source).name, d.index) for d in docs]


def test_one_file_with_two_documents(tmp_path: Path) -> None:
    f = write(
        tmp_path / "reviews.yaml", REVIEWS_DESTINATION_RULE + "---\n" + REVIEWS_VIRTUAL_SERVICE
    )
    assert kinds([str(f)]) == [
        ("DestinationRule", "reviews.yaml", 1),
        ("VirtualService", "reviews.yaml", 2),
    ]


def test_empty_documents_are_skipped(tmp_path: Path) -> None:
    f = write(tmp_path / "a.yaml", "---\n" + REVIEWS_DESTINATION_RULE + "---\n---\n")
    assert [d.kind for d in read_documents([str(f)])] == ["DestinationRule"]


def test_directory_reads_yaml_yml_json_sorted_and_not_recursive(tmp_path: Path) -> None:
    write(tmp_path / "b-vs.yml", REVIEWS_VIRTUAL_SERVICE)
    write(tmp_path / "a-dr.yaml", REVIEWS_DESTINATION_RULE)
    write(
        tmp_path / "c.json",
        json.dumps(yaml.safe_load(REVIEWS_VIRTUAL_SERVICE.replace("reviews", "ratings"))),
    )
    write(tmp_path / "notes.txt", "not a resource")
    write(tmp_path / "sub" / "d.yaml", REVIEWS_DESTINATION_RULE.replace("reviews", "details"))
    assert kinds([str(tmp_path)]) == [
        ("DestinationRule", "a-dr.yaml", 1),
        ("VirtualService", "b-vs.yml", 1),
        ("VirtualService", "c.json", 1),
    ]


def test_recursive_directory(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", REVIEWS_DESTINATION_RULE)
    write(tmp_path / "sub" / "b.yaml", REVIEWS_VIRTUAL_SERVICE)
    assert [name for _, name, _ in kinds([str(tmp_path)], recursive=True)] == ["a.yaml", "b.yaml"]


def test_directory_without_resource_files_is_an_error(tmp_path: Path) -> None:
    write(tmp_path / "sub" / "b.yaml", REVIEWS_VIRTUAL_SERVICE)
    with pytest.raises(UsageError, match="add -R"):
        read_documents([str(tmp_path)])


def test_stdin(tmp_path: Path) -> None:
    docs = read_documents(["-"], stdin=io.StringIO(REVIEWS_VIRTUAL_SERVICE))
    assert [(d.kind, d.source) for d in docs] == [("VirtualService", "<stdin>")]


def test_mixed_file_directory_and_stdin_keep_their_order(tmp_path: Path) -> None:
    f = write(tmp_path / "one" / "dr.yaml", REVIEWS_DESTINATION_RULE)
    write(
        tmp_path / "dir" / "x.yaml",
        REVIEWS_DESTINATION_RULE.replace("name: reviews", "name: ratings"),
    )
    docs = read_documents(
        [str(f), "-", str(tmp_path / "dir")], stdin=io.StringIO(REVIEWS_VIRTUAL_SERVICE)
    )
    assert [(d.kind, d.name, Path(d.source).name) for d in docs] == [
        ("DestinationRule", "reviews", "dr.yaml"),
        ("VirtualService", "reviews", "<stdin>"),
        ("DestinationRule", "ratings", "x.yaml"),
    ]


def test_stdin_only_once() -> None:
    with pytest.raises(UsageError, match="only once"):
        read_documents(["-", "-"], stdin=io.StringIO(""))


def test_bad_yaml_is_a_local_error_naming_the_file_and_line(tmp_path: Path) -> None:
    f = write(tmp_path / "broken.yaml", "apiVersion: v1\nkind: [oops\nmetadata: {}\n")
    with pytest.raises(UsageError) as info:
        read_documents([str(f)])
    assert info.value.exit_code == EXIT_USAGE
    assert str(f) in info.value.message
    assert "not valid YAML" in info.value.message
    assert "line 3" in info.value.message


def test_bad_json_names_the_file(tmp_path: Path) -> None:
    f = write(tmp_path / "x.json", '{"kind": ')
    with pytest.raises(UsageError, match=r"x\.json is not valid JSON: .*line 1"):
        read_documents([str(f)])


def test_bad_yaml_on_stdin_names_stdin() -> None:
    with pytest.raises(UsageError, match="<stdin> is not valid YAML"):
        read_documents(["-"], stdin=io.StringIO("a: : b\n  c"))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no such file or directory"):
        read_documents([str(tmp_path / "nope.yaml")])


def test_a_document_that_is_not_a_mapping(tmp_path: Path) -> None:
    f = write(tmp_path / "list.yaml", REVIEWS_DESTINATION_RULE + "---\n- a\n- b\n")
    with pytest.raises(UsageError, match=r"list\.yaml \(document 2\) is a list, not a resource"):
        read_documents([str(f)])


def test_a_document_without_kind_or_name(tmp_path: Path) -> None:
    f = write(tmp_path / "x.yaml", "apiVersion: networking.istio.io/v1\nspec: {}\n")
    with pytest.raises(
        UsageError, match=r"x\.yaml \(document 1\) has no kind and no metadata\.name"
    ):
        read_documents([str(f)])


def test_no_resources_at_all(tmp_path: Path) -> None:
    f = write(tmp_path / "empty.yaml", "# nothing yet\n")
    with pytest.raises(UsageError, match="no resources found"):
        read_documents([str(f)])


def test_a_list_document_is_flattened(tmp_path: Path) -> None:
    listing = {
        "apiVersion": "v1",
        "kind": "List",
        "items": [
            yaml.safe_load(REVIEWS_DESTINATION_RULE),
            yaml.safe_load(REVIEWS_VIRTUAL_SERVICE),
        ],
    }
    f = write(tmp_path / "all.json", json.dumps(listing))
    assert [d.kind for d in read_documents([str(f)])] == ["DestinationRule", "VirtualService"]


def test_a_json_array_of_resources(tmp_path: Path) -> None:
    f = write(tmp_path / "all.json", json.dumps([yaml.safe_load(REVIEWS_DESTINATION_RULE)]))
    assert [d.kind for d in read_documents([str(f)])] == ["DestinationRule"]


def test_yaml_body_is_one_stream_of_all_documents(tmp_path: Path) -> None:
    a = write(tmp_path / "a.yaml", REVIEWS_DESTINATION_RULE)
    b = write(tmp_path / "b.yaml", REVIEWS_VIRTUAL_SERVICE)
    body = yaml_body(read_documents([str(a), str(b)]))
    assert list(yaml.safe_load_all(body)) == [
        yaml.safe_load(REVIEWS_DESTINATION_RULE),
        yaml.safe_load(REVIEWS_VIRTUAL_SERVICE),
    ]


def test_namespace_flag_must_agree_with_the_documents(tmp_path: Path) -> None:
    f = write(
        tmp_path / "a.yaml",
        REVIEWS_DESTINATION_RULE.replace("name: reviews", "name: reviews\n  namespace: prod"),
    )
    docs = read_documents([str(f)])
    check_namespace(docs, None)
    check_namespace(docs, "prod")
    with pytest.raises(UsageError, match="in namespace 'prod', but -n says 'staging'"):
        check_namespace(docs, "staging")


def test_a_repeated_yaml_key_is_an_error_not_last_one_wins(tmp_path: Path) -> None:
    f = write(tmp_path / "dup.yaml", REVIEWS_DESTINATION_RULE + "  host: ratings\n")
    with pytest.raises(
        UsageError, match=r"dup\.yaml is not valid YAML: the key 'host' appears twice"
    ):
        read_documents([str(f)])


def test_a_repeated_json_key_is_an_error(tmp_path: Path) -> None:
    f = write(tmp_path / "dup.json", '{"kind": "A", "kind": "B"}')
    with pytest.raises(UsageError, match="appears twice"):
        read_documents([str(f)])


def test_dates_and_shared_values_are_sent_as_written(tmp_path: Path) -> None:
    text = (
        "apiVersion: networking.istio.io/v1\n"
        "kind: DestinationRule\n"
        "metadata:\n"
        "  name: reviews\n"
        "  annotations:\n"
        "    updated: 2024-05-01T10:00:00Z\n"
        "spec:\n"
        "  host: reviews\n"
        "  subsets:\n"
        "  - name: v1\n"
        "    labels: &v1 {version: v1}\n"
        "  - name: v1-copy\n"
        "    labels: *v1\n"
    )
    body = yaml_body(read_documents([str(write(tmp_path / "a.yaml", text))])).decode()
    assert "updated: '2024-05-01T10:00:00Z'" in body
    assert "&" not in body
    assert "*" not in body
