"""The client's token file: checked at start, re-read when it changes, the last good token kept."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import pytest

from kube_ip_tracker.client.token import AUTHORIZATION_METADATA, CLUSTER_METADATA, TokenOptions
from kube_ip_tracker.client.token_flags import add_client_token_arguments, client_token_from_args


def parse(argv: list[str], **kwargs: bool) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_client_token_arguments(parser, "upstream", **kwargs)
    return parser.parse_args(argv)


def test_flags_name_the_file_and_the_missing_cluster(tmp_path: Path) -> None:
    assert client_token_from_args(parse([]), "upstream") is None
    with pytest.raises(ValueError, match=r"--upstream-token-file: cannot read token file .*/absent"):
        client_token_from_args(parse(["--upstream-token-file", str(tmp_path / "absent")]), "upstream", "c1")
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ValueError, match="does not hold one token"):
        client_token_from_args(parse(["--upstream-token-file", str(tmp_path / "empty")]), "upstream", "c1")
    (tmp_path / "token").write_text("abc.def.ghi\n")
    with pytest.raises(ValueError, match="needs --upstream-token-cluster"):
        client_token_from_args(parse(["--upstream-token-file", str(tmp_path / "token")]), "upstream")
    options = client_token_from_args(parse(["--upstream-token-file", str(tmp_path / "token")]), "upstream", "c1")
    assert options == TokenOptions(tmp_path / "token", "c1")
    named = parse(["--upstream-token-file", str(tmp_path / "token"), "--upstream-token-cluster", "hub-name"])
    assert client_token_from_args(named, "upstream", "c1") == TokenOptions(tmp_path / "token", "hub-name")


def test_rotation_is_read_and_an_unusable_file_keeps_the_last_token(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("one.two.three")
    source = TokenOptions(path, "c1").reloading()
    assert source.metadata() == ((AUTHORIZATION_METADATA, "Bearer one.two.three"), (CLUSTER_METADATA, "c1"))
    tmp = tmp_path / "new"
    tmp.write_text("four.five.six\n")
    os.replace(tmp, path)  # the kubelet's atomic swap
    assert source.token() == "four.five.six" and source.reloads == 1
    path.write_text("")  # truncated: not used
    assert source.token() == "four.five.six" and source.reloads == 1
    path.unlink()
    assert source.token() == "four.five.six"
    path.write_text("seven.eight.nine")
    assert source.token() == "seven.eight.nine" and source.reloads == 2
