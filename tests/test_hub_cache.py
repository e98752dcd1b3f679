"""kqa.testing.build_hub_cache: a folder placed in a hub cache resolves through huggingface_hub offline."""

from __future__ import annotations

import subprocess
import sys

from kqa.testing import build_hub_cache

RESOLVE = (
    "import sys; from huggingface_hub import snapshot_download; "
    "print(snapshot_download(sys.argv[1], repo_type=sys.argv[2], revision=sys.argv[3]))"
)


def _resolve(cache, repo_id, repo_type="model", revision="main"):
    env = {"HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [sys.executable, "-c", RESOLVE, repo_id, repo_type, revision], env=env, capture_output=True, text=True
    )
    return done


def test_a_placed_folder_resolves_offline_with_its_files(tmp_path):
    source = tmp_path / "src"
    (source / "sub").mkdir(parents=True)
    (source / "config.json").write_text('{"a": 1}')
    (source / "sub" / "data.txt").write_text("가나다")
    snapshot = build_hub_cache(tmp_path / "cache", "org/name", source)
    done = _resolve(tmp_path / "cache", "org/name")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(snapshot)
    assert (snapshot / "sub" / "data.txt").read_text() == "가나다"


def test_revisions_and_repo_types_are_kept_apart(tmp_path):
    first, second = tmp_path / "one", tmp_path / "two"
    for folder, text in ((first, "1"), (second, "2")):
        folder.mkdir()
        (folder / "f.txt").write_text(text)
    main = build_hub_cache(tmp_path / "cache", "org/ds", first, repo_type="dataset")
    other = build_hub_cache(tmp_path / "cache", "org/ds", second, repo_type="dataset", revision="v2")
    assert main != other
    assert _resolve(tmp_path / "cache", "org/ds", "dataset", "v2").stdout.strip() == str(other)
    assert _resolve(tmp_path / "cache", "org/ds", "model").returncode != 0  # not a model repository
