"""Copying ikkuna_tune's event files to a trial's storage."""

from __future__ import annotations

from pathlib import Path

import pyarrow.fs

from ikkuna_tune.backends import EVENT_FILE_SUFFIX
from ikkuna_tune.tune.persist import TrialUploader


def test_the_uploader_copies_our_event_files_with_their_subfolders(tmp_path) -> None:
    """The run of an attempt restored without ikkuna_tune's state is a subfolder: it is copied
    too, to the same place under the trial's storage; other files are left to Tune."""
    local, remote = tmp_path / "local", tmp_path / "remote"
    ours = ["events.out.tfevents.1.host" + EVENT_FILE_SUFFIX]
    ours.append("resumed_without_state_ab12/events.out.tfevents.2.host" + EVENT_FILE_SUFFIX)
    theirs = ["events.out.tfevents.3.host", "resumed_without_state_ab12/model.pt", "notes.txt"]
    for number, name in enumerate(ours + theirs):
        (local / name).parent.mkdir(parents=True, exist_ok=True)
        (local / name).write_bytes(bytes([number]) * 8)
    uploader = TrialUploader(local)  # outside a trial: nowhere to copy to
    uploader.upload()
    assert not remote.exists()
    uploader._target = (pyarrow.fs.LocalFileSystem(), str(remote))
    uploader.upload()
    copied = sorted(str(p.relative_to(remote)) for p in remote.rglob("*") if p.is_file())
    assert copied == sorted(ours)
    for name in ours:
        assert (remote / name).read_bytes() == (local / name).read_bytes()
    assert Path(remote / ours[1]).parent.name == "resumed_without_state_ab12"


def test_in_a_folder_other_trials_write_to_only_the_trials_own_files_are_copied(tmp_path) -> None:
    """Trials given one ``log_dir`` write their event files side by side: each trial's
    storage gets the files its own bus opened (the run it moved to too), not the others'
    (a trial's directory held the earlier trials' files, their steps read as its own)."""
    import torch

    from ikkuna_tune.bus import MessageBus

    shared, remote = tmp_path / "shared", tmp_path / "remote"
    buses = [MessageBus(name, log_dir=shared) for name in ("a", "b")]
    for number, bus in enumerate(buses):
        bus.backend("tb").add_scalar("loss", torch.tensor(float(number)), 0)
    buses[0].move_log_dir(shared / "resumed_without_state_ab12")
    buses[0].backend("tb").add_scalar("loss", torch.tensor(2.0), 0)
    for bus in buses:
        bus.close()
    own = sorted(str(p.relative_to(shared)) for p in buses[0].event_files())
    assert len(own) == 2 and own[1].startswith("resumed_without_state_ab12/")
    assert len(list(shared.rglob("events.out.tfevents*"))) == 3
    uploader = TrialUploader(shared, only=buses[0].event_files)
    uploader._target = (pyarrow.fs.LocalFileSystem(), str(remote))
    uploader.upload()
    copied = sorted(str(p.relative_to(remote)) for p in remote.rglob("*") if p.is_file())
    assert copied == own
