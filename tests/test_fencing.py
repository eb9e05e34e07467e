"""The worker-side guard drops scheduled messages from a superseded term (real worker)."""

from __future__ import annotations

import uuid

import pytest
from celery import Celery
from celery.contrib.testing.worker import start_worker

from celery_leaderbeat.fencing import LocalTermRegister, RedisTermRegister, is_stale
from celery_leaderbeat.scheduler import LEASE_HEADER, SCHEDULED_AT_HEADER, TERM_HEADER
from celery_leaderbeat.testing import RedisServer, wait_for


class _Request:
    def __init__(self, **headers: object) -> None:
        self.__dict__.update(headers)


@pytest.mark.parametrize("make_register", ["local", "redis"])
def test_stale_terms_are_refused_per_lease(make_register: str) -> None:
    with RedisServer() as server:
        register = (LocalTermRegister() if make_register == "local"
                    else RedisTermRegister.from_url(server.url))

        def stale(lease: str, term: int) -> bool:
            return is_stale(_Request(**{LEASE_HEADER: lease, TERM_HEADER: term}), register)

        assert not stale("a", 3)
        assert not stale("a", 3)  # the same term again is fine
        assert not stale("a", 4)
        assert stale("a", 3)  # older than the newest seen
        assert not stale("b", 1)  # leases are independent
        assert not is_stale(_Request(), register)  # plain .delay() messages always run


def test_real_worker_drops_a_late_message_from_an_old_term() -> None:
    with RedisServer() as server:
        app = Celery("fencing_test", broker=server.url,
                     task_cls="celery_leaderbeat.fencing:FencedTask")
        app.conf.leaderbeat_fencing_url = server.url
        ran = server.client()
        marker = f"ran:{uuid.uuid4().hex}"

        @app.task(name="record")
        def record(label: str) -> str:
            ran.rpush(marker, label)
            return label

        def send(label: str, term: int) -> None:
            headers = {LEASE_HEADER: "proj", TERM_HEADER: term,
                       SCHEDULED_AT_HEADER: "2026-01-01T00:00:00+00:00"}
            record.apply_async((label,), headers=headers, ignore_result=True)

        def labels() -> list[str]:
            return [x.decode() for x in ran.lrange(marker, 0, -1)]

        with start_worker(app, pool="solo", perform_ping_check=False, loglevel="WARNING"):
            send("term 7", 7)
            send("term 8", 8)
            send("late from term 7", 7)
            # The solo pool runs messages in queue order: once this one ran,
            # the late message has been handled too.
            record.apply_async(("no headers",), ignore_result=True)
            wait_for(lambda: "no headers" in labels(), 30, message="all messages handled")

        assert labels() == ["term 7", "term 8", "no headers"]


def test_a_bad_fencing_url_names_the_setting() -> None:
    from celery.exceptions import ImproperlyConfigured

    from celery_leaderbeat.fencing import register_for

    app = Celery("fencing_bad")
    app.conf.leaderbeat_fencing_url = "reddis://localhost"
    with pytest.raises(ImproperlyConfigured, match="leaderbeat_fencing_url"):
        register_for(app)


def test_the_fencing_url_takes_every_form_a_broker_url_takes() -> None:
    """kombu's spellings and failover lists, as for the lease store (issue 11)."""
    from celery_leaderbeat.fencing import register_for
    from celery_leaderbeat.testing import free_port

    dead = f"redis://127.0.0.1:{free_port()}/0"
    lease = f"fencing-{uuid.uuid4().hex}"
    with RedisServer() as server:
        for form in ([server.url, dead], f"{server.url};{dead}",
                     f"{server.url}?socket_timeout=2&client_name=fencing"):
            app = Celery("fencing_forms", set_as_current=False)
            app.conf.leaderbeat_fencing_url = form
            assert register_for(app).observe(lease, 5) == 5, form
        assert server.client().hget(RedisTermRegister.key, lease) == b"5"
