"""The etcd store on a private single-member etcd: lease, fencing, history, registry.

Every test talks to a real etcd started on free loopback ports (one member
for the module; tests that stop or restart etcd start their own). Skipped
only when the etcd binary is absent: ``make servers`` installs it.
"""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import pytest
from celery import Celery
from celery.exceptions import ImproperlyConfigured

from celery_leaderbeat import LeaderScheduler
from celery_leaderbeat.backends import build_store
from celery_leaderbeat.elector import NotLeader
from celery_leaderbeat.lease import (
    LeaseElector,
    LeaseTiming,
    Renewal,
    StoreMisconfigured,
    StoreUnavailable,
)
from celery_leaderbeat.registry import LEADER, STANDBY
from celery_leaderbeat.stores.etcd import EtcdLeaseStore, parse_etcd_url
from celery_leaderbeat.testing import (
    EtcdCluster,
    etcd_executable,
    free_port,
    replica_record,
    store_settings,
    wait_for,
)

pytestmark = pytest.mark.skipif(etcd_executable() is None,
                                reason="etcd is not installed (make servers installs it)")

TTL = 2.0  # etcd's shortest lease


@pytest.fixture(scope="module")
def etcd() -> Iterator[EtcdCluster]:
    with EtcdCluster(1) as cluster:
        yield cluster


def etcd_store(url: str, lease_name: str, **settings: Any) -> EtcdLeaseStore:
    return EtcdLeaseStore.from_url(url, store_settings(lease_name, **settings))


@pytest.fixture
def make_store(etcd: EtcdCluster, lease_name: str) -> Iterator[Callable[[], EtcdLeaseStore]]:
    made: list[EtcdLeaseStore] = []

    def make() -> EtcdLeaseStore:
        made.append(etcd_store(etcd.url, lease_name))
        return made[-1]

    yield make
    for store in made:
        store.close()


# -- the lease -------------------------------------------------------------------------


def test_the_lease_state_machine(make_store: Callable[[], EtcdLeaseStore]) -> None:
    a, b = make_store(), make_store()
    assert a.read() is None
    first = a.acquire("owner-a", "a", TTL)
    assert first.acquired and first.lease.holder == "a"
    # Held: another owner is told who holds it, and the same owner keeps it.
    refused = b.acquire("owner-b", "b", TTL)
    assert not refused.acquired and refused.lease == first.lease
    again = a.acquire("owner-a", "a", TTL)
    assert again.acquired and again.lease.term == first.lease.term
    assert a.renew("owner-a", first.lease.term, TTL) is Renewal.RENEWED
    assert b.renew("owner-b", first.lease.term, TTL) is Renewal.LOST
    record = b.read()
    assert record is not None and record.holder == "a" and record.term == first.lease.term
    assert record.transitions == 1 and record.expires_in is not None and record.expires_in > 0
    # Released: the next acquisition gets a higher term.
    assert not b.release("owner-b", first.lease.term)
    assert a.release("owner-a", first.lease.term)
    assert a.read() is None
    assert a.renew("owner-a", first.lease.term, TTL) is Renewal.LOST
    second = b.acquire("owner-b", "b", TTL)
    assert second.acquired and second.lease.term > first.lease.term
    # Expired: etcd drops the key with its lease, and the next term is higher still.
    wait_for(lambda: a.read() is None, TTL + 3, message="the lease expiring")
    assert b.renew("owner-b", second.lease.term, TTL) is Renewal.LOST
    third = a.acquire("owner-a", "a", TTL)
    assert third.acquired and third.lease.term > second.lease.term
    assert a.read().transitions == 3  # type: ignore[union-attr]


def test_a_standby_attempt_only_reports_the_holder(
        make_store: Callable[[], EtcdLeaseStore]) -> None:
    store = make_store()
    free = store.acquire("owner-a", "a", TTL, take=False)
    assert not free.acquired and free.lease.holder is None
    assert store.read() is None


def test_the_server_lease_outlives_the_local_deadline(
        make_store: Callable[[], EtcdLeaseStore]) -> None:
    """ceil(ttl) is granted from when etcd hears the request: never before our deadline.

    2.5 s: etcd's 3 s end 0.5 s after the local deadline, room for the read under
    load (2.9 s left 0.13 s, which a loaded machine's read overran), while a
    grant of ``int(ttl)`` seconds, or one counted from an earlier moment, fails."""
    store = make_store()
    timing = LeaseTiming(ttl=2.5, renew_interval=0.5, retry_interval=0.5)
    sent = time.monotonic()
    won = store.acquire("owner-a", "a", timing.ttl)
    assert won.acquired
    local_deadline = sent + timing.local_validity
    wait_for(lambda: time.monotonic() >= local_deadline, 5)
    record = store.read()
    assert record is not None and record.term == won.lease.term  # still held in etcd


@pytest.mark.parametrize("processes", [False, True], ids=["threads", "processes"])
def test_racing_electors_never_both_hold_the_lease(
        etcd: EtcdCluster, lease_name: str, lease_race: Callable[..., list[list[int]]],
        processes: bool) -> None:
    rounds = lease_race(lambda: etcd_store(etcd.url, lease_name), replicas=4, rounds=4,
                        processes=processes)
    assert all(len(terms) == 1 for terms in rounds), rounds
    won = [terms[0] for terms in rounds]
    assert won == sorted(set(won)), won  # every round a new, higher term


# -- fenced claims and history -------------------------------------------------------


def test_a_claim_under_a_stale_term_or_another_owner_is_refused(
        make_store: Callable[[], EtcdLeaseStore]) -> None:
    old, new = make_store(), make_store()
    first = old.acquire("owner-old", "old", TTL)
    assert old.claim("owner-old", first.lease.term, {"job": "run-1"})
    assert not new.claim("owner-new", first.lease.term, {"job": "forged"})
    # The old leader is paused past its lease; another replica takes over.
    wait_for(lambda: new.read() is None, TTL + 3, message="the old lease expiring")
    second = new.acquire("owner-new", "new", TTL)
    assert second.acquired
    # Resuming, the old leader is refused with everything it sends: etcd compares
    # the lease key's create revision and value in the writing transaction.
    assert not old.claim("owner-old", first.lease.term, {"job": "run-2", "other": "x"})
    assert not old.forget("owner-old", first.lease.term, ["job"])
    assert not old.claim("owner-new", first.lease.term, {"job": "run-2"})
    assert new.load_history() == {"job": "run-1"}
    assert new.claim("owner-new", second.lease.term, {"job": "run-2"})
    assert old.load_history() == {"job": "run-2"}


NAMES = ["", "plain", "a/b/c", "with space", "ünïcødé ✓", "emoji 🛰️", "\ud800lone surrogate",
         "x" * 5000, "history/inner", "\x00nul"]


def test_history_round_trips_any_entry_name(make_store: Callable[[], EtcdLeaseStore]) -> None:
    store = make_store()
    term = store.acquire("owner", "a", TTL).lease.term
    runs = {name: f"record of {name[:20]!r}" for name in NAMES}
    assert store.claim("owner", term, runs)
    assert store.load_history() == runs
    assert store.forget("owner", term, ["a/b/c", "x" * 5000])
    assert set(store.load_history()) == set(NAMES) - {"a/b/c", "x" * 5000}


def test_more_runs_than_one_transaction_holds_are_all_claimed(
        make_store: Callable[[], EtcdLeaseStore]) -> None:
    """etcd allows 128 operations per transaction; claims and history pages go beyond."""
    store = make_store()
    term = store.acquire("owner", "a", TTL).lease.term
    runs = {f"entry-{i:04d}": str(i) for i in range(1200)}
    assert store.claim("owner", term, runs)
    assert store.load_history() == runs
    assert store.forget("owner", term, list(runs)[:700])
    assert len(store.load_history()) == 500


# -- replica registry and step-down --------------------------------------------------


def test_heartbeats_ride_on_lease_calls_with_the_role_they_leave(
        make_store: Callable[[], EtcdLeaseStore]) -> None:
    a, b = make_store(), make_store()
    won = a.acquire("owner-a", "a", TTL, beat=replica_record("a", expires_in=3))
    b.acquire("owner-b", "b", TTL, beat=replica_record("b", expires_in=3))
    seen = {r.identity: (r.role, r.term) for r in a.replicas()}
    assert seen == {"a": (LEADER, won.lease.term), "b": (STANDBY, None)}
    assert a.renew("owner-a", won.lease.term, TTL,
                   beat=replica_record("a", expires_in=3)) is Renewal.RENEWED
    assert [r.identity for r in b.replicas()] == ["a", "b"]  # leader first
    b.withdraw("b")
    assert [r.identity for r in a.replicas()] == ["a"]
    # Records expire with their etcd lease when nobody renews them.
    wait_for(lambda: not a.replicas(), 6, message="heartbeat records expiring")


def test_heartbeat_records_share_one_etcd_lease_and_age_as_written(
        make_store: Callable[[], EtcdLeaseStore]) -> None:
    """One grant serves many records; a reader ages each record from the write and
    unlists it once its lifetime is over, though its heartbeat lease lives on."""
    store, reader = make_store(), make_store()
    grants: list[str] = []
    call = store.gateway.call

    def counted(path: str, body: Any) -> Any:
        if path == "lease/grant":
            grants.append(path)
        return call(path, body)

    store.gateway.call = counted  # type: ignore[method-assign]
    lifetime = 3.0
    for _ in range(4):
        store.acquire("owner-a", "a", TTL, beat=replica_record("a", expires_in=lifetime),
                      take=False)
        (listed,) = reader.replicas()
        assert listed.heartbeat_age is not None and listed.heartbeat_age < 1.0
        assert listed.expires_in is not None and lifetime - 1.0 < listed.expires_in <= lifetime
    assert len(grants) == 1
    written = time.monotonic()
    wait_for(lambda: not reader.replicas(), lifetime + 2, message="the record unlisted")
    assert time.monotonic() - written >= lifetime - 1.0  # whole seconds, as etcd counts
    assert list(reader._scan(reader.replicas_prefix))  # still in etcd, with its lease


def test_a_heartbeat_lease_etcd_no_longer_has_is_granted_anew(
        make_store: Callable[[], EtcdLeaseStore]) -> None:
    """Revoked behind the store's back (as when the process was suspended past its
    end, or etcd was restored): the call that names it is made again on a new one."""
    leader, standby, reader = make_store(), make_store(), make_store()
    won = leader.acquire("owner-a", "a", TTL, beat=replica_record("a"))
    standby.acquire("owner-b", "b", TTL, beat=replica_record("b"))
    for store in (leader, standby):
        assert store._heartbeat_lease is not None
        reader._revoke(store._heartbeat_lease.lease_id)
    assert not reader.replicas()
    assert leader.renew("owner-a", won.lease.term, TTL,
                        beat=replica_record("a")) is Renewal.RENEWED
    assert not standby.acquire("owner-b", "b", TTL, beat=replica_record("b")).acquired
    assert {(r.identity, r.role) for r in reader.replicas()} == {("a", LEADER), ("b", STANDBY)}


def test_a_step_down_request_releases_the_lease_of_its_term_only(
        make_store: Callable[[], EtcdLeaseStore]) -> None:
    leader, operator, other = make_store(), make_store(), make_store()
    assert operator.request_step_down() is None  # nobody to ask
    first = leader.acquire("owner-a", "a", TTL)
    asked = operator.request_step_down()
    assert asked is not None and (asked.holder, asked.term) == ("a", first.lease.term)
    assert leader.renew("owner-a", first.lease.term, TTL,
                        beat=replica_record("a", expires_in=3)) is Renewal.STEPPED_DOWN
    assert leader.read() is None
    assert [(r.identity, r.role) for r in operator.replicas()] == [("a", STANDBY)]
    # A request names one term: the next leader renews undisturbed.
    second = other.acquire("owner-b", "b", TTL)
    assert other.renew("owner-b", second.lease.term, TTL) is Renewal.RENEWED


# -- configuration and faults --------------------------------------------------------


@pytest.mark.parametrize(("url", "problem"), [
    ("etcd://", "a host is missing"),
    ("etcd://host:notaport", "not a port number"),
    ("etcd://host:70000", "not a port number"),
    ("etcd://a:2379,,b:2379", "a host is missing"),
    ("etcd://host:2379/prefix", "nothing may follow the hosts"),
    ("etcd://:secret@host:2379", "user name before '@' is empty"),
])
def test_a_malformed_url_is_refused_at_start_up(url: str, problem: str) -> None:
    with pytest.raises(ImproperlyConfigured, match="leaderbeat_elector") as caught:
        build_store("etcd", url, store_settings("conf"))
    assert problem in str(caught.value)
    assert "secret" not in str(caught.value)


def test_urls_name_every_member_and_hide_the_password() -> None:
    parsed = parse_etcd_url("etcds://beat:s3cret@a.example,[::1]:2380,10.0.0.3:23790")
    assert parsed.tls and parsed.username == "beat" and parsed.password == "s3cret"
    assert parsed.endpoints == [("a.example", 2379), ("::1", 2380), ("10.0.0.3", 23790)]
    assert parsed.description == "etcds://beat:**@a.example:2379,[::1]:2380,10.0.0.3:23790"
    store = build_store("etcds", "etcds://beat:s3cret@a.example", store_settings("conf"))
    assert "s3cret" not in store.description + repr(store)


@pytest.mark.parametrize(("settings", "key", "problem"), [
    ({"timing": LeaseTiming(ttl=1.5, renew_interval=0.5)}, "leaderbeat_lease_ttl",
     "at least 2 s"),
    ({"etcd_options": {"timeout": 5.0}}, "leaderbeat_etcd_options", "below the lease TTL"),
    ({"etcd_options": {"timout": 1}}, "leaderbeat_etcd_options", "unknown option"),
    ({"etcd_options": {"ca_cert": "/etc/hostname"}}, "leaderbeat_etcd_options",
     "need an etcds:// URL"),
])
def test_settings_etcd_cannot_honour_are_refused_at_start_up(
        settings: dict[str, Any], key: str, problem: str) -> None:
    with pytest.raises(ImproperlyConfigured, match=key) as caught:
        build_store("etcd", "etcd://127.0.0.1:2379", store_settings("conf", **settings))
    assert problem in str(caught.value)


def test_etcd_options_must_be_a_dict() -> None:
    from celery import Celery

    from celery_leaderbeat.settings import LeaderSettings

    app = Celery("conf", set_as_current=False)
    app.conf.leaderbeat_etcd_options = "timeout=1"
    with pytest.raises(ImproperlyConfigured, match="CELERY_LEADERBEAT_ETCD_OPTIONS"):
        LeaderSettings.from_app(app)


@pytest.mark.parametrize("options", [
    {"ca_cert": "/nonexistent/ca.pem"},
    {"client_cert": "/etc/hostname"},
])
def test_tls_files_are_checked_at_start_up(options: dict[str, Any]) -> None:
    with pytest.raises(ImproperlyConfigured, match="leaderbeat_etcd_options"):
        build_store("etcds", "etcds://127.0.0.1:2379", store_settings("conf",
                                                                      etcd_options=options))


@pytest.fixture
def not_etcd() -> Iterator[int]:
    """A port where an HTTP server answers that is not etcd (as a proxy or a web server)."""

    class NotFound(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), NotFound)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def test_a_wrong_endpoint_leaves_a_standby_with_a_clear_reason(
        lease_name: str, not_etcd: int) -> None:
    """Unreachable at start-up is transient (as for Redis): stay a standby, say why."""
    refused = free_port()
    store = etcd_store(f"etcd://127.0.0.1:{refused},127.0.0.1:{not_etcd}", lease_name)
    elector = LeaseElector(store, identity="a")
    started = time.monotonic()
    with pytest.raises(NotLeader) as caught:
        elector.is_leader()
    assert time.monotonic() - started < 1.0
    reason = str(caught.value)
    assert "no etcd member answered" in reason
    assert f"127.0.0.1:{refused}: Connection refused" in reason
    assert f"127.0.0.1:{not_etcd}: HTTP 404 without an etcd answer" in reason
    elector.close()


def test_etcd_stopped_and_restarted_leadership_recovers(lease_name: str) -> None:
    with EtcdCluster(1) as etcd:
        timing = LeaseTiming(ttl=TTL, renew_interval=0.2, retry_interval=0.2)
        elector = LeaseElector(etcd_store(etcd.url, lease_name, timing=timing),
                               identity="a", timing=timing)
        assert elector.is_leader()
        first_term = elector.term
        assert first_term is not None
        etcd.stop(etcd.members[0])
        # The leader keeps leading until its local deadline, then steps down; no error
        # other than NotLeader reaches the caller.
        wait_for(lambda: _not_leader(elector), TTL + 2, message="stepping down")
        etcd.restart(etcd.members[0])
        wait_for(lambda: _leads(elector), 15, message="leading again")
        # Terms are revisions kept on disk: after a kill -9 and a restart, the next
        # acquisition still gets a higher term.
        elector.release()
        etcd.kill(etcd.members[0])
        etcd.restart(etcd.members[0])
        other = etcd_store(etcd.url, lease_name)
        won = other.acquire("owner-b", "b", TTL)
        assert won.acquired and won.lease.term > first_term
        other.close()
        elector.close()


def _leads(elector: LeaseElector) -> bool:
    return not _not_leader(elector)


def _not_leader(elector: LeaseElector) -> bool:
    try:
        elector.is_leader()
    except NotLeader:
        return True
    return False


def test_an_unreachable_store_raises_store_unavailable(lease_name: str) -> None:
    store = etcd_store(f"etcd://127.0.0.1:{free_port()}", lease_name)
    for call in (store.read, store.load_history, store.replicas,
                 lambda: store.claim("o", 1, {"x": "y"})):
        with pytest.raises(StoreUnavailable):
            call()


def test_login_with_user_and_password(lease_name: str, tmp_path: Path) -> None:
    with EtcdCluster(1) as etcd:
        etcd.enable_login("s3cret-pw")
        endpoint = etcd.members[0].endpoint
        anonymous = etcd_store(f"etcd://{endpoint}", lease_name)
        with pytest.raises(StoreUnavailable, match=r"refuses this client.*user name is empty"):
            anonymous.acquire("owner", "a", TTL)
        wrong = etcd_store(f"etcd://root:wrong-pw@{endpoint}", lease_name)
        with pytest.raises(StoreMisconfigured, match="login as 'root' refused") as caught:
            wrong.read()
        assert "wrong-pw" not in str(caught.value)
        # Permanent: beat does not start on it, and says which setting to fix.
        app = Celery("etcd-login", set_as_current=False)
        app.conf.update(broker_url="memory://", leaderbeat_lease_name=lease_name,
                        leaderbeat_elector=f"etcd://root:wrong-pw@{endpoint}")
        with pytest.raises(ImproperlyConfigured, match=r"^leaderbeat_elector.*refuses") as raised:
            LeaderScheduler(app, schedule_filename=str(tmp_path / "schedule"))
        assert "wrong-pw" not in str(raised.value)

        store = etcd_store(f"etcd://root:s3cret-pw@{endpoint}", lease_name)
        assert "s3cret" not in store.description
        won = store.acquire("owner", "a", 5.0)
        assert won.acquired and store.claim("owner", won.lease.term, {"job": "run"})
        # A restarted member forgets its tokens: the store logs in again.
        etcd.stop(etcd.members[0])
        etcd.restart(etcd.members[0])
        assert store.renew("owner", won.lease.term, 5.0) is Renewal.RENEWED
        assert store.load_history() == {"job": "run"}
        for each in (anonymous, wrong, store):
            each.close()


def test_tls_with_a_client_certificate(lease_name: str) -> None:
    with EtcdCluster(1, tls=True) as etcd:
        assert etcd.url.startswith("etcds://")
        store = etcd_store(etcd.url, lease_name, etcd_options=etcd.tls_options)
        won = store.acquire("owner", "a", TTL)
        assert won.acquired and store.claim("owner", won.lease.term, {"job": "run"})
        store.close()
        # Without the client certificate, or trusting another CA, etcd is unusable;
        # the reason says so.
        no_cert = etcd_store(etcd.url, lease_name,
                             etcd_options={"ca_cert": etcd.tls_options["ca_cert"]})
        with pytest.raises(StoreMisconfigured, match="refuses this client"):
            no_cert.read()
        plain = etcd_store(etcd.url.replace("etcds://", "etcd://"), lease_name)
        with pytest.raises(StoreUnavailable):
            plain.read()
        wrong_ca = etcd_store(etcd.url, lease_name)  # the system's CAs
        with pytest.raises(StoreUnavailable, match=r"TLS with 127\.0\.0\.1:\d+ failed"):
            wrong_ca.read()

