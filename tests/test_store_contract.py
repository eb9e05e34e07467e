"""One store contract: every store is built by ``from_url(url, settings)``, and a
package adds a URL scheme through the ``celery_leaderbeat.stores`` entry points."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from celery.exceptions import ImproperlyConfigured

from celery_leaderbeat.backends import STORES, build_store
from celery_leaderbeat.lease import LeaseElector
from celery_leaderbeat.stores.etcd import EtcdLeaseStore
from celery_leaderbeat.stores.file import FileLeaseStore
from celery_leaderbeat.stores.redis import RedisLeaseStore
from celery_leaderbeat.stores.sql import SqlLeaseStore
from celery_leaderbeat.testing import store_settings

#: A third-party package: a store class and the distribution metadata that
#: registers its scheme, as pip would install them.
PLUGIN = '''
from celery_leaderbeat.stores.file import FileLeaseStore


class TmpLeaseStore(FileLeaseStore):
    """tmplease://<name>: a file lease under the directory in $TMPLEASE_DIR."""

    @classmethod
    def from_url(cls, url, settings):
        import os
        from urllib.parse import urlsplit
        store = cls(os.path.join(os.environ["TMPLEASE_DIR"], urlsplit(url).netloc + ".lock"))
        store.description = "tmplease://" + urlsplit(url).netloc + " for " + settings.lease_name
        return store
'''

CHOOSE = '''
import json, sys
from celery_leaderbeat.backends import choose_elector
from celery_leaderbeat.testing import store_settings
from celery.exceptions import ImproperlyConfigured

out = {}
for url in sys.argv[1:]:
    try:
        elector = choose_elector(store_settings("contract", elector=url)).elector
        out[url] = [type(elector.store).__name__, elector.store.description,
                    elector.is_leader()]
    except ImproperlyConfigured as exc:
        out[url] = ["ImproperlyConfigured", str(exc), None]
print(json.dumps(out))
'''


@pytest.fixture
def plugin_path(tmp_path: Path) -> Path:
    site = tmp_path / "site"
    (site / "tmplease_store-1.0.dist-info").mkdir(parents=True)
    (site / "tmplease_store.py").write_text(PLUGIN)
    (site / "tmplease_store-1.0.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: tmplease-store\nVersion: 1.0\n")
    (site / "tmplease_store-1.0.dist-info" / "entry_points.txt").write_text(textwrap.dedent("""\
        [celery_leaderbeat.stores]
        tmplease = tmplease_store:TmpLeaseStore
        file = tmplease_store:TmpLeaseStore
    """))
    return site


def choose_in_child(site: Path, tmp_path: Path, *urls: str) -> dict[str, list[object]]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.getcwd()]),
           "TMPLEASE_DIR": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", CHOOSE, *urls], env=env, capture_output=True,
                          text=True, timeout=60, check=True)
    result: dict[str, list[object]] = json.loads(done.stdout)
    return result


def test_an_entry_point_adds_a_scheme(plugin_path: Path, tmp_path: Path) -> None:
    chosen = choose_in_child(plugin_path, tmp_path, "tmplease://beat", "tmpleese://beat",
                             f"file://{tmp_path}/own.lock")
    assert chosen["tmplease://beat"] == ["TmpLeaseStore", "tmplease://beat for contract", True]
    assert (tmp_path / "beat.lock").exists()
    # A typo is told about the added scheme too.
    kind, message, _ = chosen["tmpleese://beat"]
    assert kind == "ImproperlyConfigured"
    assert "Did you mean tmplease://?" in str(message)
    # An entry point cannot replace a built-in scheme.
    assert chosen[f"file://{tmp_path}/own.lock"][0] == "FileLeaseStore"


def test_without_the_package_the_scheme_is_unknown(tmp_path: Path) -> None:
    with pytest.raises(ImproperlyConfigured, match="no elector for the scheme 'tmplease'"):
        build_store("tmplease", "tmplease://beat", store_settings("contract"))


@pytest.mark.parametrize(("url", "store_class"), [
    ("redis://127.0.0.1:6379/0", RedisLeaseStore),
    ("redis+socket:///tmp/redis.sock", RedisLeaseStore),
    ("sqlite:///{tmp}/lease.db", SqlLeaseStore),
    ("file://{tmp}/beat.lock", FileLeaseStore),
    ("etcd://127.0.0.1:2379,127.0.0.1:22379", EtcdLeaseStore),
])
def test_every_builtin_store_is_built_from_url_and_settings(
        url: str, store_class: type, tmp_path: Path) -> None:
    settings = store_settings("contract")
    store = build_store(url.split("://")[0], url.format(tmp=tmp_path), settings)
    try:
        assert isinstance(store, store_class)
        assert isinstance(LeaseElector(store, identity="x"), LeaseElector)
        # Every scheme of the table names a class with the one constructor.
        assert callable(getattr(store_class, "from_url", None))
    finally:
        store.close()


def test_the_alias_table_names_importable_store_classes() -> None:
    from celery.utils.imports import symbol_by_name

    for scheme, (path, _extra) in STORES.items():
        if scheme == "django":
            continue  # needs configured Django settings: tests/test_django_store.py
        assert callable(symbol_by_name(path).from_url), scheme


def test_a_file_url_with_a_host_part_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ImproperlyConfigured, match="needs an absolute path"):
        build_store("file", "file://./beat.lock", store_settings("contract"))
