"""The driver-to-trial channel: a post reaches the trial's next read; a trial whose flag is down
does not ask the mailbox, except at its first and every FULL_READ_EVERY-th read, so a
directive whose flag was never raised still arrives."""

from __future__ import annotations

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
