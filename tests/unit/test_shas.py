"""shas: an abbreviated SHA expanded to the full one among a registry's tags (pure: no network)."""
from __future__ import annotations

import pytest

from deploytasks import shas
from deploytasks.errors import ConfigError

IMAGE = "ghcr.io/acme/shop-web"
A = "3f2c1e9" + "a" * 33
B = "3f2c1e9" + "b" * 33
C = "4e5d6c7" + "c" * 33


def test_a_unique_prefix_expands_to_its_full_sha():
    assert shas.expand("3f2c1e9a", [A, B, C, "latest"], IMAGE) == A
    assert shas.expand("4e5d6c7", [A, C], IMAGE) == C


def test_a_full_sha_is_itself_whatever_the_tags():
    assert shas.expand(A, [], IMAGE) == A


@pytest.mark.parametrize("tag", [
    "latest", "v1.2", "3f2c1e9", "3f2c1e9-dirty", "3f2c1e9" + "a" * 32, A.upper(), A + "0", f"{A}-arm64",
])
def test_tags_that_are_not_a_full_sha_never_match(tag):
    """A tag must be the whole 40-hex SHA: a short tag, a suffix or a 41st character is another tag."""
    assert shas.starting("3f2c1e9", [tag]) == []


def test_no_match_names_the_image_and_the_prefix():
    with pytest.raises(ConfigError, match=rf"^no image of {IMAGE} is tagged with a SHA starting 3f2c1e9; nothing"):
        shas.expand("3f2c1e9", [C, "latest", "3f2c1e9"], IMAGE)


def test_several_matches_are_listed_and_ask_for_more_characters():
    with pytest.raises(ConfigError) as error:
        shas.expand("3f2c1e9", [B, A, C], IMAGE)
    message = str(error.value)
    assert f"2 images of {IMAGE} are tagged with a SHA starting with it ({A}, {B})" in message
    assert "more characters" in message


def test_an_ambiguity_names_five_matches_and_counts_the_rest():
    tags = [f"3f2c1e9{i}" + "0" * 32 for i in range(8)]
    with pytest.raises(ConfigError) as error:
        shas.expand("3f2c1e9", tags, IMAGE)
    message = str(error.value)
    assert ", ".join(tags[:5]) + " and 3 more" in message
    assert tags[5] not in message


def test_duplicate_tags_are_one_match():
    """Pages of a tag list may overlap: the same tag twice is not an ambiguity."""
    assert shas.expand("3f2c1e9", [A, A], IMAGE) == A


def test_full():
    assert shas.full(A) and not shas.full(A[:39]) and not shas.full(A.upper()) and not shas.full("g" * 40)
