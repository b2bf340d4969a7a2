"""The durable copy of a found block (gstratum/storage/blocks.py BlockFiles): written atomically, owned by the
process that drives it (flock), taken over by the next one when that process is gone, never lost when unreadable."""
from __future__ import annotations

import os
import subprocess
import sys
import time

from gstratum.mining.blockstatus import BlockRecord
from gstratum.storage.blocks import BlockFiles

from .conftest import ROOT


def found_block(n: int = 1, size: int = 1000) -> BlockRecord:
    raw = bytes([n]) * 80 + os.urandom(size)
    return BlockRecord(row_id=f"{n:032x}", block_hash=f"{n:064x}", height=100 + n, prevhash="ab" * 32, block=raw,
                      header=raw[:80].hex(), worker="alice.rig\u00e9", username="alice", connection_id="0" * 32,
                      job_id="j1", reward=625_000_000, found_at=time.time(), cluster="gstratum")


def test_a_written_block_is_held_by_its_writer_and_taken_over_once_released(tmp_path):
    files = BlockFiles(tmp_path / "blocks")
    block = found_block()
    claim = files.write(block)
    assert claim.path == tmp_path / "blocks" / f"{block.block_hash}.block"
    assert list((tmp_path / "blocks").iterdir()) == [claim.path]       # no tmp file left
    assert BlockFiles(tmp_path / "blocks").adopt() == []                 # held: its owner is alive
    BlockFiles.release(claim, done=False)                                # the owner stops: the file stays
    [(adopted, taken)] = BlockFiles(tmp_path / "blocks").adopt()
    assert adopted == block
    assert BlockFiles(tmp_path / "blocks").adopt() == []                 # taken over by exactly one
    BlockFiles.release(taken, done=True)
    assert files.pending_files() == []


def test_a_block_held_by_another_process_is_left_alone_until_it_dies(tmp_path):
    files = BlockFiles(tmp_path / "blocks")
    BlockFiles.release(files.write(found_block()), done=False)
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, sys, time; f = open(sys.argv[1], 'rb'); fcntl.flock(f, fcntl.LOCK_EX); print('held', "
        "flush=True); time.sleep(60)"), str(files.pending_files()[0])], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert files.adopt() == []
    finally:
        holder.kill()
        holder.wait()
    assert len(files.adopt()) == 1


def test_an_unreadable_file_is_kept_aside_and_a_complete_orphan_tmp_is_recovered(tmp_path):
    files = BlockFiles(tmp_path / "blocks")
    good = found_block(1)
    BlockFiles.release(files.write(good), done=False)
    torn = files.path_of(found_block(2).block_hash)
    torn.write_bytes(files.path_of(good.block_hash).read_bytes()[:-10])   # truncated
    # a writer that died between its fsync and its rename (an hour ago)
    orphan = found_block(3)
    tmp = tmp_path / "blocks" / f"{orphan.block_hash}.12345.tmp"
    claim = files.write(orphan)
    os.rename(claim.path, tmp)
    BlockFiles.release(claim, done=False)
    os.utime(tmp, (time.time() - 3600, time.time() - 3600))
    adopted = {block.block_hash: block for block, _ in files.adopt()}
    assert adopted == {good.block_hash: good, orphan.block_hash: orphan}
    assert (tmp_path / "blocks" / f"{torn.name}.corrupt").exists() and not torn.exists()
    assert files.path_of(orphan.block_hash).exists() and not tmp.exists()


def test_a_fresh_tmp_file_is_not_touched(tmp_path):
    """It may be a block being written right now by a process that has not locked it yet."""
    files = BlockFiles(tmp_path / "blocks")
    claim = files.write(found_block())
    tmp = claim.path.with_name("x.1.tmp")
    os.rename(claim.path, tmp)
    BlockFiles.release(claim, done=False)
    assert files.adopt() == [] and tmp.exists()
