"""The life of a found block, in one place: its statuses, the transitions allowed between them, and how the nodes'
answers decide them (pure: no I/O).

    (found) ──> pending ──> submitted ──> confirmed
       │          │  ▲          │  ▲
       │          │  └ pending  ▼  │
       │          ├──> rejected orphaned ──> confirmed
       │          └──> stale
       └──> candidate (random practice jobs: nothing to submit)

A block is `pending` from the moment it is durable until a node accepts it (`submitted`), a node refuses it as
invalid (`rejected`), or the chain has moved on past it (`stale`). The block keeper then follows `submitted` to
`confirmed` (CONFIRMATIONS deep) or `orphaned`, and an orphaned block whose chain comes back goes back to
`submitted` or straight to `confirmed`. `rejected`, `stale`, `confirmed` and `candidate` are final.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field

CONFIRMATIONS = 100   # coinbase maturity: the reward is spendable, a reorg this deep is not expected
# A pending block (no node has it on its active chain) is `stale` once every node that has the chain at its height
# holds another block there at least this deep. Nothing mines on a block no node accepted (our own templates follow
# the nodes' tip), so one block on top already makes it very unlikely to win; six is the customary depth past which
# a reorg is not expected. Waiting costs only a cheap resubmission every 30 s; a wrong `stale` would lose a reward.
STALE_DEPTH = 6


class BlockStatus(str, enum.Enum):
    CANDIDATE = "candidate"
    PENDING = "pending"
    SUBMITTED = "submitted"
    REJECTED = "rejected"
    STALE = "stale"
    CONFIRMED = "confirmed"
    ORPHANED = "orphaned"


S = BlockStatus
# old status (None: no row yet) -> the statuses it may change to. `pending -> pending` records progress (attempts,
# the reason it is still pending). A row may first be written in any submitter outcome: the database may have been
# unreachable while the block went through the earlier ones.
TRANSITIONS: dict[BlockStatus | None, frozenset[BlockStatus]] = {
    None: frozenset({S.CANDIDATE, S.PENDING, S.SUBMITTED, S.REJECTED, S.STALE}),
    S.PENDING: frozenset({S.PENDING, S.SUBMITTED, S.REJECTED, S.STALE}),
    S.SUBMITTED: frozenset({S.CONFIRMED, S.ORPHANED}),
    S.ORPHANED: frozenset({S.SUBMITTED, S.CONFIRMED}),
    S.CANDIDATE: frozenset(),
    S.REJECTED: frozenset(),
    S.STALE: frozenset(),
    S.CONFIRMED: frozenset(),
}
# Where the submitter's work ends: from here on the block keeper (or nobody) changes it.
SETTLED = frozenset({S.SUBMITTED, S.REJECTED, S.STALE, S.CONFIRMED, S.ORPHANED})


def parse_status(value: str | None) -> BlockStatus | None:
    """A status as stored; None for no row. An unknown value (a newer release's) is an error, never guessed."""
    return None if value is None else BlockStatus(value)


def allowed(old: BlockStatus | None, new: BlockStatus) -> bool:
    return new in TRANSITIONS[old]


# -- what the nodes answer to submitblock ----------------------------------------------------------------------

class Answer(enum.Enum):
    ACCEPTED = "accepted"          # null, or "duplicate": the node has it
    INCONCLUSIVE = "inconclusive"  # valid, but not on the node's active chain (yet): pending, re-checked
    INVALID = "invalid"            # a consensus refusal: no node will ever take these bytes
    NO_VERDICT = "no verdict"      # unreachable, busy, or a refusal that depends on the node's own view: try again


# Refusals that say something about the node, not the block: it lacks the parent (behind, or on another branch),
# marked the parent invalid (its own view), or its clock disagrees. Core does not store these blocks as invalid.
NODE_RELATIVE = frozenset({"prev-blk-not-found", "bad-prevblk", "time-too-new"})
RPC_DESERIALIZATION_ERROR = -22    # Core's "Block decode failed" / "Block does not start with a coinbase"


def judge_answer(answer: str | None) -> Answer:
    """One node's submitblock result (null or a BIP22 string)."""
    if answer is None or answer == "duplicate":
        return Answer.ACCEPTED
    if answer in ("inconclusive", "duplicate-inconclusive"):
        return Answer.INCONCLUSIVE
    if answer in NODE_RELATIVE:
        return Answer.NO_VERDICT
    return Answer.INVALID          # high-hash, bad-txnmrklroot, bad-cb-amount, duplicate-invalid, ...


def judge_rpc_error(code: int) -> Answer:
    """submitblock answered with a JSON-RPC error: undecodable bytes are invalid; anything else (warming up, a
    full work queue) is the node's state."""
    return Answer.INVALID if code == RPC_DESERIALIZATION_ERROR else Answer.NO_VERDICT


def combine(answers) -> Answer:
    """Every node's answer to one block: one acceptance is enough; otherwise a consensus refusal is final (every
    node runs the same rules); otherwise a node holding it inconclusively; otherwise nothing is known yet."""
    answers = set(answers)
    for answer in (Answer.ACCEPTED, Answer.INVALID, Answer.INCONCLUSIVE):
        if answer in answers:
            return answer
    return Answer.NO_VERDICT


# -- where the chain has the block -----------------------------------------------------------------------------

@dataclass(frozen=True)
class NodeView:
    """One node's active chain at a block's height: its tip height, the hash it holds at that height (None when
    its tip is below), and whether it knows the block's parent at all."""
    tip_height: int
    at_height: str | None
    knows_parent: bool

    def speaks_for(self, height: int) -> bool:
        """A node that has not reached the height, or never saw the parent (behind, or on a branch that does not
        contain it), says nothing about the block."""
        return self.knows_parent and self.at_height is not None and self.tip_height >= height


class Place(enum.Enum):
    UNKNOWN = "unknown"        # no node speaks for that height
    ON_CHAIN = "on chain"      # every node that speaks has the block on its active chain
    DISPLACED = "displaced"    # every node that speaks has another block there
    SPLIT = "split"            # the nodes disagree: wait until they converge


@dataclass(frozen=True)
class Placement:
    place: Place
    depth: int = 0                                        # ON_CHAIN: confirmations; DISPLACED: the other block's
    other: str | None = None                              # DISPLACED: the block the chain holds instead
    speakers: tuple[str, ...] = field(default_factory=tuple)
    holders: tuple[str, ...] = field(default_factory=tuple)   # nodes with the block on their active chain


def place(views: dict[str, NodeView], block_hash: str, height: int) -> Placement:
    """Decide from the nodes that have the chain at that height. ON_CHAIN depth is the deepest any of them sees
    (they agree; a lagging one has not seen the newest blocks); DISPLACED depth the shallowest (conservative)."""
    speaking = {name: view for name, view in views.items() if view.speaks_for(height)}
    if not speaking:
        return Placement(Place.UNKNOWN)
    names = tuple(sorted(speaking))
    holders = tuple(name for name in names if speaking[name].at_height == block_hash)
    on = [v for v in speaking.values() if v.at_height == block_hash]
    off = [v for v in speaking.values() if v.at_height != block_hash]
    if on and off:
        return Placement(Place.SPLIT, speakers=names, holders=holders)
    if on:
        return Placement(Place.ON_CHAIN, max(v.tip_height - height + 1 for v in on), speakers=names,
                         holders=holders)
    others = {v.at_height for v in off}
    return Placement(Place.DISPLACED, min(v.tip_height - height + 1 for v in off),
                     other=others.pop() if len(others) == 1 else None, speakers=names)


def pending_outcome(placement: Placement) -> BlockStatus:
    """A block no node accepted yet: on a node's active chain after all (it was inconclusive, or the node got it
    another way) is accepted, whatever the other nodes hold (the keeper follows it from there); displaced
    STALE_DEPTH deep on every node that speaks is stale; anything else stays pending."""
    if placement.holders:
        return S.SUBMITTED
    if placement.place is Place.DISPLACED and placement.depth >= STALE_DEPTH:
        return S.STALE
    return S.PENDING


def keeper_outcome(current: BlockStatus, placement: Placement) -> BlockStatus | None:
    """The keeper's decision for an accepted block (submitted or orphaned); None: nothing to change."""
    if placement.place is Place.ON_CHAIN:
        new = S.CONFIRMED if placement.depth >= CONFIRMATIONS else S.SUBMITTED
    elif placement.place is Place.DISPLACED:
        new = S.ORPHANED
    else:
        return None
    return new if new is not current and allowed(current, new) else None


# -- the block itself ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class BlockRecord:
    """Everything needed to resubmit a found block and record it, whoever picks it up (the process that found it,
    its successor from the durable file, or the cluster leader from the database row)."""
    row_id: str
    block_hash: str
    height: int
    prevhash: str | None
    block: bytes            # the full block as submitted (empty when it could not be assembled)
    header: str
    worker: str
    username: str
    connection_id: str
    job_id: str
    reward: int | None      # satoshis the coinbase pays
    found_at: float         # epoch seconds
    cluster: str
    payouts: dict | None = None   # PPLNS: the split its coinbase pays (gstratum.storage.pplns.JobPayout.record)

    def as_dict(self, with_block: bool = True) -> dict:
        """The record as JSON-ready values; without the block itself when it travels beside as raw bytes."""
        data = {"row_id": self.row_id, "block_hash": self.block_hash, "height": self.height,
                "prevhash": self.prevhash, "header": self.header, "worker": self.worker, "username": self.username,
                "connection_id": self.connection_id, "job_id": self.job_id, "reward": self.reward,
                "found_at": self.found_at, "cluster": self.cluster, "size": len(self.block),
                "payouts": self.payouts}
        if with_block:
            data["block"] = self.block.hex()
        return data

    @classmethod
    def from_dict(cls, data: dict, block: bytes | None = None) -> "BlockRecord":
        """`block`: the raw block when it travelled beside the record. ValueError / KeyError / TypeError when `data`
        is not a complete block record, or the block is not the one it describes (truncated, another header)."""
        if block is None:
            block = bytes.fromhex(data["block"])
        if len(block) != int(data["size"]) or (block and block[:80].hex() != data["header"]):
            raise ValueError(f"block of {len(block)} bytes does not match its record ({data['size']} bytes)")
        return cls(row_id=str(data["row_id"]), block_hash=str(data["block_hash"]), height=int(data["height"]),
                   prevhash=data["prevhash"], block=block, header=str(data["header"]),
                   worker=str(data["worker"]), username=str(data["username"]),
                   connection_id=str(data["connection_id"]), job_id=str(data["job_id"]),
                   reward=None if data["reward"] is None else int(data["reward"]),
                   found_at=float(data["found_at"]), cluster=str(data["cluster"]),
                   payouts=data.get("payouts") if isinstance(data.get("payouts"), dict) else None)
