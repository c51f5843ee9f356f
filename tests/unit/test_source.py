"""source: the code of a SHA read from a local git repository, and the hashes `--fast` reuses by.

Every test reads the session's tiny repository (see PROCESS_COMMITS in conftest): no host, no network.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import subprocess
import tarfile

import pytest

from deploytasks import source
from deploytasks.errors import ConfigError


def _with(config, **changes):
    """The config with ProcessConfig fields changed."""
    return dataclasses.replace(config, processes=dataclasses.replace(config.processes, **changes))


def _members(archive: bytes) -> dict[str, bytes | None]:
    """name -> content (None for directories) of a tar archive."""
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        return {m.name.rstrip("/"): (tar.extractfile(m).read() if m.isfile() else None)
                for m in tar.getmembers() if m.type != tarfile.XGLTYPE}


@pytest.fixture
def shas(process_repo):
    return process_repo[1]


_READS: dict = {}


def _read(config, sha: str) -> source.Source:
    """source.read, remembered per (ProcessConfig, SHA) across this module: reads are pure."""
    key = (config.processes, sha)
    if key not in _READS:
        _READS[key] = source.read(config, sha)
    return _READS[key]


# --- resolve --------------------------------------------------------------------------------

def test_resolve_expands_an_abbreviated_sha(process_config, shas):
    full = shas["code"]
    assert source.resolve(process_config, full[:7]) == full
    assert source.resolve(process_config, full[:12].upper().lower()) == full
    assert source.resolve(process_config, full) == full


@pytest.mark.parametrize("sha", ["deadbee", "0" * 40])
def test_resolve_an_unknown_sha_is_a_config_error(process_config, sha):
    with pytest.raises(ConfigError, match=rf"--sha {sha} is not a commit of .*; nothing was changed"):
        source.resolve(process_config, sha)


def test_resolve_refuses_a_tree_that_is_not_a_commit(process_config, process_repo, shas):
    tree = subprocess.run(["git", "-C", str(process_repo[0]), "rev-parse", f"{shas['v1']}^{{tree}}"],
                          capture_output=True, text=True, check=True).stdout.strip()
    with pytest.raises(ConfigError, match="is not a commit"):
        source.resolve(process_config, tree)


def _colliding_commits(length: int = 7) -> tuple[bytes, bytes]:
    """Two commit objects (of the empty tree) whose SHAs share their first `length` hex
    characters: found by hashing, the way git would name them (deterministic)."""
    seen: dict[str, bytes] = {}
    for i in range(1_000_000):
        body = (b"tree 4b825dc642cb6eb9a060e54bf8d69288fbee4904\nauthor T <t@example.com> 0 +0000\n"
                b"committer T <t@example.com> 0 +0000\n\nattempt %d\n" % i)
        prefix = hashlib.sha1(b"commit %d\0" % len(body) + body).hexdigest()[:length]
        if prefix in seen:
            return seen[prefix], body
        seen[prefix] = body
    raise AssertionError("no collision found")


def test_resolve_an_ambiguous_prefix_lists_the_commits(process_config, tmp_path):
    git = ["git", "-C", str(tmp_path)]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "hash-object", "-w", "-t", "tree", "--stdin"], input=b"", check=True, capture_output=True)
    written = sorted(subprocess.run([*git, "hash-object", "-w", "-t", "commit", "--stdin"], input=body, check=True,
                                    capture_output=True).stdout.decode().strip() for body in _colliding_commits())
    prefix = written[0][:7]
    assert written[1].startswith(prefix)
    config = _with(process_config, source_repo=tmp_path)
    with pytest.raises(ConfigError, match=rf"--sha {prefix} is ambiguous: 2 commits of .* start with it "
                                          rf"\({written[0]}, {written[1]}\); give more characters"):
        source.resolve(config, prefix)
    assert source.resolve(config, written[1][:12]) == written[1], "more characters: one commit"


def test_resolve_a_branch_named_like_the_sha_does_not_hide_the_commit(process_config, tmp_path, git_repo):
    made = git_repo(tmp_path, [("one", {"a": "1\n"}), ("two", {"a": "2\n"})])
    subprocess.run(["git", "-C", str(tmp_path), "branch", made["one"][:7], made["two"]], check=True)
    config = _with(process_config, source_repo=tmp_path)
    assert source.resolve(config, made["one"][:7]) == made["one"]


def test_read_of_an_unknown_sha_fails_before_anything_else(process_config):
    with pytest.raises(ConfigError, match="not a commit"):
        source.read(process_config, "deadbee")


def test_missing_git_is_reported_as_such(process_config, shas, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # no git on PATH
    with pytest.raises(ConfigError, match="git is not installed"):
        source.read(process_config, shas["v1"])


# --- archive --------------------------------------------------------------------------------

def test_archive_holds_the_source_path_subtree_at_its_root(process_config, shas):
    code = source.read(process_config, shas["v1"][:7])
    assert code.sha == shas["v1"]
    members = _members(code.archive)
    assert set(members) == {"app.py", "requirements.txt", "assets", "assets/site.css", "build.sh"}
    assert members["app.py"] == b"VERSION = 1\n"
    assert "README.md" not in members and not any(name.startswith("app/") for name in members)


def test_archive_is_the_content_at_that_sha_not_the_work_tree(process_config, shas):
    assert _members(_read(process_config, shas["v1"]).archive)["app.py"] == b"VERSION = 1\n"
    assert _members(_read(process_config, shas["code"]).archive)["app.py"] == b"VERSION = 2\n"


def test_archive_without_source_path_is_the_whole_repository(process_config, shas):
    members = _members(source.read(_with(process_config, source_path=""), shas["readme"]).archive)
    assert members["README.md"] == b"readme v2\n"
    assert members["app/app.py"] == b"VERSION = 1\n"


def test_a_source_path_missing_at_that_sha_is_a_config_error(process_config, shas):
    with pytest.raises(ConfigError, match="git archive in .*process-repo"):
        source.read(_with(process_config, source_path="services/shop"), shas["v1"])


def test_source_repr_leaves_out_the_archive(process_config, shas):
    code = _read(process_config, shas["v1"])
    assert "archive" not in repr(code) and shas["v1"] in repr(code)


# --- requirements hash ----------------------------------------------------------------------

def test_requirements_hash_follows_the_requirements_file_only(process_config, shas):
    h = {name: _read(process_config, sha).requirements_hash for name, sha in shas.items()}
    assert h["v1"] and len(h["v1"]) == 16
    # README, code and assets changed: same requirements.txt, same hash
    assert h["v1"] == h["readme"] == h["code"] == h["assets"]
    assert h["requirements"] != h["v1"]
    assert h["build-script"] == h["requirements"]
    # back to the same content: the same hash again (content, not history)
    assert h["requirements-back"] == h["v1"]


def test_requirements_hash_is_none_without_a_requirements_file(process_config, shas):
    code = _read(_with(process_config, requirements="missing/requirements.txt"), shas["v1"])
    assert code.requirements_hash is None


def test_requirements_path_is_relative_to_source_path(process_config, shas):
    """REQUIREMENTS=app/requirements.txt with SOURCE_PATH unset names the same file."""
    inside = _read(process_config, shas["v1"]).requirements_hash
    whole = _read(_with(process_config, source_path="", requirements="app/requirements.txt"), shas["v1"])
    assert whole.requirements_hash == inside
    assert _read(_with(process_config, source_path=""), shas["v1"]).requirements_hash is None


# --- build hash -----------------------------------------------------------------------------

def test_build_hash_changes_only_with_the_build_inputs(process_config, shas):
    assert process_config.processes.build_inputs == ("assets", "build.sh")
    h = {name: _read(process_config, sha).build_hash for name, sha in shas.items()}
    assert h["v1"] and len(h["v1"]) == 16
    assert h["v1"] == h["readme"] == h["code"], "README and app.py are not build inputs"
    assert h["assets"] != h["code"], "assets/ changed"
    assert h["requirements"] == h["assets"], "requirements.txt is not a build input"
    assert h["build-script"] != h["requirements"], "build.sh changed"
    assert h["requirements-back"] == h["build-script"]


def test_build_hash_without_inputs_covers_the_whole_source_path(process_config, shas):
    config = _with(process_config, build_inputs=())
    h = {name: _read(config, shas[name]).build_hash for name in ("v1", "readme", "code")}
    assert h["v1"] == h["readme"], "README.md is outside SOURCE_PATH"
    assert h["code"] != h["readme"], "every file of SOURCE_PATH is an input"


def test_build_hash_changes_with_the_build_command(process_config, shas):
    one = _read(process_config, shas["v1"]).build_hash
    other = _read(_with(process_config, build_command=("sh", "build.sh", "--release")), shas["v1"]).build_hash
    assert one != other


def test_build_hash_tells_apart_commands_that_differ_only_in_splitting(process_config, shas):
    quoted = _read(_with(process_config, build_command=("sh", "-c", "make x")), shas["v1"]).build_hash
    split = _read(_with(process_config, build_command=("sh", "-c", "make", "x")), shas["v1"]).build_hash
    assert quoted != split  # `sh -c "make x"` builds x; `sh -c make x` runs a bare make


def test_build_hash_of_a_missing_input_is_stable(process_config, shas):
    config = _with(process_config, build_inputs=("assets", "no-such-dir"))
    assert _read(config, shas["v1"]).build_hash == _read(config, shas["code"]).build_hash
    assert _read(config, shas["v1"]).build_hash != _read(config, shas["assets"]).build_hash


def test_no_build_command_means_no_build_hash(process_config, shas):
    code = _read(_with(process_config, build_command=(), build_inputs=()), shas["v1"])
    assert code.build_hash is None
    assert code.requirements_hash is not None
