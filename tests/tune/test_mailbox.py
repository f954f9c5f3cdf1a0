"""The driver-to-trial channel: a post reaches the trial's next read; a trial whose flag is down
does not ask the mailbox, except at its first and every FULL_READ_EVERY-th read, so a
directive whose flag was never raised still arrives."""

from __future__ import annotations

import threading
import time

import ray

from ikkuna_tune.tune.mailbox import FULL_READ_EVERY, Mailbox, TrialInbox


def test_a_post_reaches_the_next_read_and_only_once(ray_session) -> None:
    mailbox = Mailbox("mailbox_test_post")
    inbox = TrialInbox("mailbox_test_post", "t1")
    assert inbox.take() == []  # first read: in full, nothing there
    assert mailbox.post("t1", {"freeze": ["conv"]})
    assert inbox.take() == [{"freeze": ["conv"]}]
    assert inbox.take() == []  # taken, and the flag is down
    other = TrialInbox("mailbox_test_post", "t2")
    mailbox.post("t2", {"freeze": ["fc"]})
    assert inbox.take() == [] and other.take() == [{"freeze": ["fc"]}]  # each its own
    ray.kill(mailbox._actor)


def test_a_directive_without_a_flag_arrives_at_the_next_full_read(ray_session) -> None:
    mailbox = Mailbox("mailbox_test_unflagged")
    inbox = TrialInbox("mailbox_test_unflagged", "t1")
    assert inbox.take() == []  # read 1 (in full)
    # stored without raising the flag (as if the key-value store had refused it)
    ray.get(mailbox._actor.post.remote("t1", {"freeze": ["conv"]}))
    reads = [inbox.take() for _ in range(FULL_READ_EVERY)]  # reads 2 .. FULL_READ_EVERY + 1
    assert reads[:-1] == [[]] * (FULL_READ_EVERY - 1)  # the flag is down: the mailbox is not asked
    assert reads[-1] == [{"freeze": ["conv"]}]  # the full read finds it
    assert inbox.take(check_flag=False) == []  # a full read on demand (as a restore does)
    ray.kill(mailbox._actor)


def test_a_train_rank_waits_for_its_report_to_be_handled(ray_session, caplog) -> None:
    """A Ray Train job's rank 0 waits for the scheduler's acknowledgement of the report it
    named, where the scheduler marked the trial as steered; an unmarked trial (no scheduler,
    or another scheduler's trial in an experiment whose mailbox exists) does not wait; after
    one acknowledgement that does not come, it warns once and stops waiting."""
    alone = TrialInbox("mailbox_test_unscheduled", "t1")
    assert not alone.steered() and not alone.wait_handled("a-1", timeout=30)  # at once
    mailbox = Mailbox("mailbox_test_handled")
    unmarked = TrialInbox("mailbox_test_handled", "t0")  # the mailbox exists, the trial is not
    started = time.monotonic()
    assert not unmarked.steered() and not unmarked.wait_handled("a-1", timeout=30)
    assert time.monotonic() - started < 5
    mailbox.steer("t1")
    mailbox.steer("t2")
    inbox = TrialInbox("mailbox_test_handled", "t1")
    assert inbox.steered()
    later = threading.Timer(0.3, mailbox.acknowledge, ("t1", "a-1"))
    started = time.monotonic()
    later.start()
    assert inbox.wait_handled("a-1", timeout=30)
    assert 0.3 <= time.monotonic() - started < 30
    other = TrialInbox("mailbox_test_handled", "t2")  # another trial's acknowledgement
    mailbox.acknowledge("t2", "a-2")
    assert inbox.wait_handled("a-1", timeout=30)  # t1's stands
    assert not inbox.wait_handled("a-2", timeout=0.2)  # t2's is not t1's
    assert not inbox.waits and "did not acknowledge report a-2" in caplog.text
    mailbox.acknowledge("t1", "a-3")
    assert not inbox.wait_handled("a-3")  # no more waiting
    assert other.wait_handled("a-2", timeout=30)
    # a trial that ended is no longer marked (restored later under another scheduler, its
    # rank 0 neither names nor waits)
    mailbox.discard("t2")
    assert not TrialInbox("mailbox_test_handled", "t2").steered()
    assert TrialInbox("mailbox_test_handled", "t1").steered()
    ray.kill(mailbox._actor)
